"""Smoke test: does the merged model chat? Render each prompt through the chat template, generate.

`run_smoke` loads the model with transformers and checks, in this order:

1. the tokenizer has a chat template;
2. the template renders a user/assistant exchange (both messages appear in the text);
3. for each prompt: the logits of a forward pass over the rendered prompt are finite (no NaN/inf),
   greedy generation ends without error, and a second greedy run gives the same tokens.

A degenerate reply (empty, or one token repeated) is recorded in the report's `warnings`, which
the card shows; with `publish.smoke.strict: true` it fails the test instead.

A prompt with a system message whose template cannot render one is still run: the system message
is folded into the user turn, and the transcript's `note` says so.

Writes `smoke.json` in the run directory (see `SmokeReport`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from publisher.errors import PublisherError
from publisher.recipe import SmokePrompt, SmokeSettings
from publisher.rundir import RunDir

# What the template check sends through the chat template; both must come out in the text.
PROBE_USER = "Smoke-test question: are you there?"
PROBE_ASSISTANT = "Smoke-test answer: yes, I am here."

FOLDED_SYSTEM_NOTE = (
    "the chat template does not render a system message; it was folded into the user turn"
)


@dataclass
class SmokeTranscript:
    """One smoke-test conversation and the model's reply.

    Attributes:
        user: the user message, e.g. `"What is the capital of France?"`.
        system: the system message, or `None`.
        rendered_prompt: the exact text the chat template produced (generation prompt added).
        reply: the decoded reply (special tokens skipped).
        new_tokens: number of generated tokens, e.g. 16.
        seconds: wall time of the generation, e.g. 0.21.
        tokens_per_second: `new_tokens / seconds`, e.g. 76.2.
        note: anything worth knowing about how the prompt was rendered, e.g. that the system
            message was folded into the user turn; `None` when there is nothing to say.
    """

    user: str
    system: str | None
    rendered_prompt: str
    reply: str
    new_tokens: int
    seconds: float
    tokens_per_second: float
    note: str | None = None


@dataclass
class SmokeReport:
    """What `smoke.json` holds.

    Attributes:
        passed: whether every check passed.
        transcripts: one per prompt.
        max_new_tokens: the generation limit, e.g. 32.
        device: where generation ran, e.g. `"cpu"`.
        dtype: the dtype the model was loaded in, e.g. `"float32"`.
        error: the failure message when `passed` is false.
        warnings: findings that did not fail the test, e.g. a degenerate reply (empty, or one
            token repeated), which fails it with `publish.smoke.strict: true`.
    """

    passed: bool
    transcripts: list[SmokeTranscript] = field(default_factory=list)
    max_new_tokens: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> SmokeReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["transcripts"] = [SmokeTranscript(**t) for t in data.get("transcripts", [])]
        return cls(**data)


class SmokeError(PublisherError):
    """The smoke test failed. The message says why; `report` is the failed report."""

    def __init__(self, message: str, report: SmokeReport | None = None):
        super().__init__(message)
        self.report = report


def write_smoke(report: SmokeReport, run_dir: Path) -> Path:
    """Write `report` to `RUN_DIR/smoke.json` and return that path."""
    return report.write(RunDir(Path(run_dir)).smoke)


def run_smoke(
    model_dir: Path,
    settings: SmokeSettings,
    device: str = "cpu",
    dtype: str | None = None,
    *,
    run_dir: Path | None = None,
) -> SmokeReport:
    """Smoke-test the model in `model_dir` through its chat template.

    Args:
        model_dir: a transformers model directory (weights, config, tokenizer, chat template).
        settings: the prompts and `max_new_tokens` (the recipe's `publish.smoke`).
        device: torch device, e.g. `"cpu"` or `"cuda"`.
        dtype: torch dtype name, e.g. `"bfloat16"`; `None` means float32 on CPU and the
            checkpoint's own dtype elsewhere.
        run_dir: when given, the report is written to `RUN_DIR/smoke.json`, passed or failed.

    Returns:
        the passed report.

    Raises:
        SmokeError: a check failed; the error's `report` has `passed=False`, the `error` and the
            transcripts of the prompts that ran before the failure.
    """
    import torch

    model_dir = Path(model_dir)
    if dtype is None:
        dtype = "float32" if device == "cpu" else "auto"
    report = SmokeReport(
        passed=False, max_new_tokens=settings.max_new_tokens, device=device, dtype=dtype
    )
    try:
        tokenizer, model = _load(model_dir, device, dtype)
        report.dtype = str(model.dtype).removeprefix("torch.")
        _check_chat_template(tokenizer, model_dir)
        with torch.inference_mode():
            for prompt in settings.prompts:
                transcript, problem = _converse(
                    tokenizer, model, prompt, settings.max_new_tokens, device
                )
                report.transcripts.append(transcript)
                if problem:
                    report.warnings.append(f"the reply to {prompt.user!r} is degenerate: {problem}")
        if settings.strict and report.warnings:
            raise SmokeError(
                "; ".join(report.warnings)
                + " (publish.smoke.strict is true: a degenerate reply fails the smoke test)"
            )
    except SmokeError as exc:
        report.error = str(exc)
        if run_dir is not None:
            write_smoke(report, run_dir)
        raise SmokeError(str(exc), report) from None
    report.passed = True
    if run_dir is not None:
        write_smoke(report, run_dir)
    return report


def _load(model_dir: Path, device: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype, None)
    if not isinstance(torch_dtype, (str, torch.dtype)):
        raise SmokeError(f"unknown dtype '{dtype}'; use float32, float16, bfloat16 or auto")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise SmokeError(f"cannot load the model in {model_dir}: {exc}") from None
    model.to(device)
    model.eval()
    return tokenizer, model


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _check_chat_template(tokenizer: Any, model_dir: Path) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SmokeError(
            f"the tokenizer in {model_dir} has no chat template; set 'publish.chat_template' "
            "in the recipe or give the model a chat_template.jinja"
        )
    exchange = [
        {"role": "user", "content": PROBE_USER},
        {"role": "assistant", "content": PROBE_ASSISTANT},
    ]
    try:
        text = _render(tokenizer, exchange, generation_prompt=False)
    except Exception as exc:  # jinja2 errors, raise_exception() in templates, ...
        raise SmokeError(
            f"the chat template cannot render a user/assistant exchange: {exc}"
        ) from None
    missing = [m["role"] for m in exchange if m["content"] not in text]
    if missing:
        raise SmokeError(
            "the chat template renders a user/assistant exchange without the "
            f"{' and '.join(missing)} message; fix the template so it outputs every message"
        )


def _messages(tokenizer: Any, prompt: SmokePrompt) -> tuple[list[dict[str, str]], str | None]:
    """The messages for `prompt`, and a note when the system message had to be folded in."""
    user = {"role": "user", "content": prompt.user}
    if prompt.system is None:
        return [user], None
    messages = [{"role": "system", "content": prompt.system}, user]
    try:
        if prompt.system in _render(tokenizer, messages, generation_prompt=True):
            return messages, None
    except Exception:  # templates that reject a system role raise from jinja
        pass
    folded = {"role": "user", "content": f"{prompt.system}\n\n{prompt.user}"}
    return [folded], FOLDED_SYSTEM_NOTE


def _converse(
    tokenizer: Any, model: Any, prompt: SmokePrompt, max_new_tokens: int, device: str
) -> tuple[SmokeTranscript, str | None]:
    import torch

    messages, note = _messages(tokenizer, prompt)
    try:
        rendered = _render(tokenizer, messages, generation_prompt=True)
    except Exception as exc:
        raise SmokeError(f"the chat template cannot render prompt {prompt.user!r}: {exc}") from None
    # The template writes the special tokens it wants (BOS included): do not add them twice.
    inputs = tokenizer(rendered, return_tensors="pt", add_special_tokens=False).to(device)

    logits = model(**inputs).logits
    if not torch.isfinite(logits).all():
        bad = "NaN" if torch.isnan(logits).any() else "inf"
        raise SmokeError(
            f"the model's logits contain {bad} for prompt {prompt.user!r}; the merged weights "
            "are broken (check the parents and the merge dtype)"
        )

    config = _greedy_config(tokenizer, model, max_new_tokens)
    prompt_length = inputs["input_ids"].shape[1]
    start = time.perf_counter()
    first = model.generate(**inputs, generation_config=config)[0, prompt_length:].tolist()
    seconds = time.perf_counter() - start
    second = model.generate(**inputs, generation_config=config)[0, prompt_length:].tolist()

    reply = tokenizer.decode(first, skip_special_tokens=True)
    if first != second:
        again = tokenizer.decode(second, skip_special_tokens=True)
        raise SmokeError(
            f"two greedy runs of {prompt.user!r} gave different replies ({reply!r} and "
            f"{again!r}); generation is not deterministic"
        )
    transcript = SmokeTranscript(
        user=prompt.user,
        system=prompt.system,
        rendered_prompt=rendered,
        reply=reply,
        new_tokens=len(first),
        seconds=seconds,
        tokens_per_second=len(first) / seconds if seconds > 0 else 0.0,
        note=note,
    )
    return transcript, degenerate(tokenizer, first, reply)


def degenerate(tokenizer: Any, tokens: list[int], reply: str) -> str | None:
    """Why a reply is degenerate, or `None`: empty (nothing but special tokens or whitespace),
    or one token repeated."""
    if not reply.strip():
        return f"empty ({len(tokens)} new tokens, nothing but special tokens or whitespace)"
    special = set(tokenizer.all_special_ids)
    content = [t for t in tokens if t not in special]
    if len(content) > 1 and len(set(content)) == 1:
        return f"one token repeated {len(content)} times ({reply.split()[0]!r}...)"
    return None


def _greedy_config(tokenizer: Any, model: Any, max_new_tokens: int) -> Any:
    """Greedy decoding with the model's own stop tokens and nothing else from its config."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=model.generation_config.bos_token_id,
    )
