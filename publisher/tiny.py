"""Tiny, deterministic Mistral-architecture parents for the demo and the tests.

Two random-weight `MistralForCausalLM`s that share one BPE tokenizer (trained here with
`tokenizers` on a small built-in text) and a chat template. Every tensor differs between the two
parents, norms included, so a merge of them shows the interpolation factor in every tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TINY_PARENT_NAMES = ("tiny-base", "tiny-other")

TINY_LICENSE = "apache-2.0"

# A ChatML-style template: supports a system message, renders user/assistant turns, and adds the
# assistant header when asked for a generation prompt.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
The merge takes two parent models and blends their weights layer by layer.
Spherical linear interpolation keeps the norm of each row while it turns one vector toward another.
A recipe names the parents, the layer ranges and the interpolation factor t for every filter.
When t is zero the result equals the base model; when t is one it equals the other parent.
Attention layers and feed forward layers may use different schedules of t across the stack.
The model card shows the schedule as a table and as a picture so readers see its shape.
Questions and answers: what is the capital of France? Paris is the capital of France.
What is two plus two? Two plus two is four. Which colour is the sky on a clear day? Blue.
Hello! How are you today? I am well, thank you. Please tell me a short story about a cat.
Once upon a time a small cat found a warm place in the sun and slept there all afternoon.
"""

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny parents.

    Attributes:
        hidden_size: width of the residual stream, e.g. 64.
        num_hidden_layers: number of decoder layers, e.g. 4.
        intermediate_size: width of the MLP, e.g. 128.
        num_attention_heads: query heads, e.g. 4.
        num_key_value_heads: key/value heads (grouped-query attention), e.g. 2.
        vocab_size: BPE vocabulary size the tokenizer is trained to, e.g. 384.
    """

    hidden_size: int = 64
    num_hidden_layers: int = 4
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 384


def build_tokenizer(out_dir: Path, vocab_size: int):
    """Train a byte-level BPE tokenizer on the built-in corpus and save it with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # Only the corpus's own (ASCII) characters: a random model then "writes" readable
        # fragments instead of stray bytes that decode to replacement characters. Plus "\n",
        # which the corpus (trained line by line) lacks and the chat template writes after
        # every role and turn: without it each one would be <unk>.
        initial_alphabet=[piece for piece, _ in byte_level.pre_tokenize_str("\n")],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_parent(out_dir: Path, seed: int, spec: TinyModelSpec | None = None) -> Path:
    """Write one tiny parent (weights, config, tokenizer, chat template, README) to `out_dir`.

    The same `seed` always gives the same bytes. Every parameter, norms included, is drawn at
    random so that two parents built with different seeds differ in every tensor.
    """
    from transformers import MistralConfig, MistralForCausalLM

    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, spec.vocab_size)
    vocab_size = len(tokenizer)

    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=512,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = MistralForCausalLM(config)
    randomize(model, seed)
    description = f"A tiny random-weight Mistral-architecture model (seed {seed})"
    save_tiny_parent(model, tokenizer, out_dir, description)
    return out_dir


def randomize(model, seed: int, std: float = 0.05) -> None:
    """Draw every parameter of `model` from `seed`: norms around 1, the rest around 0 (`std`).

    Every tensor, norms included, then differs between two parents of different seeds, so a
    merge of them shows the interpolation factor in every tensor.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                # Around 1 like a trained norm, but different per parent.
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(std * torch.randn(param.shape, generator=generator))


def save_tiny_parent(model, tokenizer, out_dir: Path, description: str) -> Path:
    """Save `model` (safetensors), its generation config and a README card into `out_dir`."""
    from transformers import GenerationConfig

    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        f"---\nlicense: {TINY_LICENSE}\nlibrary_name: transformers\n"
        f"pipeline_tag: text-generation\ntags:\n- tiny\n- random-weights\n---\n"
        f"# {out_dir.name}\n\n{description} for testing the publisher pipeline.\n",
        encoding="utf-8",
    )
    return out_dir


def build_tiny_parents(root: Path, spec: TinyModelSpec | None = None) -> tuple[Path, Path]:
    """Build both tiny parents under `root` (skipping any already built) and return their paths."""
    root = Path(root)
    paths = []
    for seed, name in enumerate(TINY_PARENT_NAMES, start=1):
        path = root / name
        marker = path / "config.json"
        if not marker.exists() or json.loads(marker.read_text()).get("num_hidden_layers") != (
            (spec or TinyModelSpec()).num_hidden_layers
        ):
            build_tiny_parent(path, seed=seed, spec=spec)
        paths.append(path.resolve())
    return paths[0], paths[1]


NEAR_COPY_NAMES = ("tiny-base", "tiny-tuned")
"""The directories `build_near_copy_parents` writes: the base model and its short fine-tune."""


def build_demo_parents(root: Path) -> tuple[Path, Path]:
    """The demo's parents under `root`, built once: a tiny base and its near copy, as the
    parents of real merges are (`build_near_copy_parents`). (base, tuned).

    In float32, unlike most real parents: lm-eval on a CPU runs bfloat16 at half the speed, and
    the demo evaluates three models. The tests cover bfloat16 near copies.
    """
    root = Path(root)
    base, tuned = (root / name for name in NEAR_COPY_NAMES)
    # The near copy's README is written last: with it, both parents are complete.
    if "near copy" not in _read(tuned / "README.md") or not (base / "config.json").exists():
        return build_near_copy_parents(root, dtype="float32")
    return base.resolve(), tuned.resolve()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def build_near_copy_parents(
    root: Path,
    dtype: str = "bfloat16",
    steps: int = 3,
    learning_rate: float = 1e-3,
    seed: int = 1,
    spec: TinyModelSpec | None = None,
) -> tuple[Path, Path]:
    """Build a tiny base model and a near copy of it, as real SLERP parents are: (base, tuned).

    Real merges blend two fine-tunes of one base, so their tensors differ by small deltas, and
    they are stored in bfloat16. Here the base is `build_tiny_parent(seed)`; the tuned copy is the
    base after `steps` AdamW steps of causal-LM loss on the built-in sentences, with the input
    embeddings frozen as many fine-tunes leave them (so that one tensor is the same in both
    parents, and no merge of it can show t). Both are saved
    in `dtype` ("bfloat16" or "float32") under `root/tiny-base` and `root/tiny-tuned`, with the
    base's tokenizer and chat template. Deterministic (seeded, fixed data order); about a
    second on a CPU for the default shape.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(root)
    base_dir, tuned_dir = (root / name for name in NEAR_COPY_NAMES)
    build_tiny_parent(base_dir, seed=seed, spec=spec)
    if tuned_dir.exists():
        shutil.rmtree(tuned_dir)
    shutil.copytree(base_dir, tuned_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    batch = tokenizer(_CORPUS.splitlines(), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.get_input_embeddings().weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    torch_dtype = getattr(torch, dtype)
    model.to(torch_dtype).save_pretrained(tuned_dir, safe_serialization=True)
    if torch_dtype != torch.float32:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        base.to(torch_dtype).save_pretrained(base_dir, safe_serialization=True)
    (tuned_dir / "README.md").write_text(
        (base_dir / "README.md").read_text(encoding="utf-8").replace("random-weights", "fine-tune")
        + f"\nThis copy is {base_dir.name} after {steps} AdamW steps (lr {learning_rate}) of "
        "causal-LM loss on a few sentences: a near copy, as the parents of real merges are.\n",
        encoding="utf-8",
    )
    return base_dir.resolve(), tuned_dir.resolve()
