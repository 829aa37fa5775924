"""Tiny random-weight parents of the architectures people merge, for the tests.

Each entry of `ARCHITECTURES` is a small `transformers` config (a few layers, hidden size 32)
of one model family, chosen to exercise what sets it apart in a merge:

- `llama-tied`: Llama with tied embeddings, so the weights hold no `lm_head` tensor;
- `qwen2`: attention projections with biases;
- `gemma2`: four norms per layer, logit soft-capping, tied embeddings;
- `phi3`: fused `qkv_proj` and `gate_up_proj` tensors;
- `mistral`: grouped-query attention, as most 7B merges are.

All share the demo's BPE tokenizer and chat template (`publisher.tiny.build_tokenizer`), so the
smoke test can talk to every merged model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from publisher.tiny import build_tokenizer, randomize, save_tiny_parent

# The shape every tiny architecture shares: small enough that building, merging and running a
# pair takes about a second, big enough for grouped-query attention (4 query heads, 2 kv heads).
_SHAPE: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 256,
}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-tied": {"model_type": "llama", "tie_word_embeddings": True},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": False},
    "gemma2": {
        "model_type": "gemma2",
        "tie_word_embeddings": True,
        "query_pre_attn_scalar": 8,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 128,
    },
    "phi3": {"model_type": "phi3", "tie_word_embeddings": False},
    "mistral": {"model_type": "mistral", "tie_word_embeddings": False, "sliding_window": None},
}
"""Architecture name -> the config fields that make it that architecture (on top of `_SHAPE`)."""


def build_arch_parent(
    out_dir: Path, arch: str, seed: int, vocab_size: int = 384, **overrides: Any
) -> Path:
    """Write one tiny parent of architecture `arch` (a key of `ARCHITECTURES`) to `out_dir`.

    `overrides` change config fields, e.g. `intermediate_size=96` for a parent of other shapes.
    The same arguments always give the same bytes.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, vocab_size)
    fields = {**_SHAPE, **ARCHITECTURES[arch], **overrides}
    config = AutoConfig.for_model(
        fields.pop("model_type"),
        **fields,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    # Wider than the demo's weights: with tied embeddings and weights this small the residual
    # stream stays the last input token's embedding, and greedy decoding repeats it forever.
    randomize(model, seed, std=0.2)
    description = f"A tiny random-weight {arch} model (seed {seed})"
    return save_tiny_parent(model, tokenizer, out_dir, description)


def build_arch_parents(root: Path, arch: str) -> tuple[Path, Path]:
    """Two tiny parents of architecture `arch` under `root/arch` (built once) : (base, other)."""
    paths = []
    for seed, name in enumerate(("base", "other"), start=1):
        path = Path(root) / arch / name
        if not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
            build_arch_parent(path, arch, seed=seed)
        paths.append(path.resolve())
    return paths[0], paths[1]


def architecture_of(path: Path) -> str:
    """The `architectures[0]` a parent's config.json names, e.g. `"Gemma2ForCausalLM"`."""
    return json.loads((Path(path) / "config.json").read_text())["architectures"][0]
