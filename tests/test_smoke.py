"""Smoke stage on the tiny parents: real transformers, no mocks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from publisher.recipe import SmokePrompt, SmokeSettings
from publisher.smoke import FOLDED_SYSTEM_NOTE, SmokeError, SmokeReport, run_smoke, write_smoke

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SETTINGS = SmokeSettings(
    prompts=[
        SmokePrompt(user="What is the capital of France?"),
        SmokePrompt(system="You are a helpful assistant.", user="Tell me a short story."),
    ],
    max_new_tokens=8,
)

# A template that drops system messages (as some model families' templates do).
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A template that renders user turns only: it cannot show an assistant reply.
USER_ONLY_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def parent(tiny_parents: tuple[Path, Path]) -> Path:
    """The tiny base parent (built once per session by the `tiny_parents` fixture)."""
    return tiny_parents[0]


def _copy(parent: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(parent, tmp_path / "model"))


def _set_template(model_dir: Path, template: str | None) -> None:
    path = model_dir / "chat_template.jinja"
    if template is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(template, encoding="utf-8")
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _edit_weight(model_dir: Path, name: str, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})


def test_smoke_passes_through_the_chat_template(parent: Path, tmp_path: Path) -> None:
    report = run_smoke(parent, SETTINGS, run_dir=tmp_path)

    assert report.passed and report.error is None
    assert (report.device, report.dtype, report.max_new_tokens) == ("cpu", "float32", 8)
    plain, with_system = report.transcripts
    for transcript in report.transcripts:
        assert transcript.rendered_prompt.startswith("<|im_start|>")
        assert transcript.rendered_prompt.endswith("<|im_start|>assistant\n")
        assert f"<|im_start|>user\n{transcript.user}<|im_end|>" in transcript.rendered_prompt
        assert transcript.reply.strip()
        assert 0 < transcript.new_tokens <= 8
        assert transcript.seconds > 0 and transcript.tokens_per_second > 0
        assert transcript.note is None
    assert "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" in (
        with_system.rendered_prompt
    )
    assert "system" not in plain.rendered_prompt
    # written to the run directory, and read back unchanged
    assert SmokeReport.read(tmp_path / "smoke.json") == report


def test_smoke_is_deterministic(parent: Path) -> None:
    first = run_smoke(parent, SETTINGS)
    second = run_smoke(parent, SETTINGS)
    assert [t.reply for t in first.transcripts] == [t.reply for t in second.transcripts]
    assert [t.rendered_prompt for t in first.transcripts] == [
        t.rendered_prompt for t in second.transcripts
    ]


def test_write_smoke_uses_the_run_directory(tmp_path: Path) -> None:
    report = SmokeReport(passed=False, error="boom")
    path = write_smoke(report, tmp_path)
    assert path == tmp_path / "smoke.json"
    assert SmokeReport.read(path) == report


def test_smoke_fails_without_a_chat_template(parent: Path, tmp_path: Path) -> None:
    model = _copy(parent, tmp_path)
    _set_template(model, None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    with pytest.raises(SmokeError, match="has no chat template") as info:
        run_smoke(model, SETTINGS, run_dir=run_dir)

    assert info.value.report is not None and not info.value.report.passed
    written = SmokeReport.read(run_dir / "smoke.json")
    assert not written.passed
    assert written.error == str(info.value)
    assert "publish.chat_template" in written.error


def test_smoke_fails_when_the_template_drops_the_assistant(parent: Path, tmp_path: Path) -> None:
    model = _copy(parent, tmp_path)
    _set_template(model, USER_ONLY_TEMPLATE)
    with pytest.raises(SmokeError, match="without the assistant message"):
        run_smoke(model, SETTINGS)


def test_smoke_folds_the_system_message_when_the_template_drops_it(
    parent: Path, tmp_path: Path
) -> None:
    model = _copy(parent, tmp_path)
    _set_template(model, NO_SYSTEM_TEMPLATE)
    report = run_smoke(model, SETTINGS)

    plain, with_system = report.transcripts
    assert plain.note is None
    assert with_system.note == FOLDED_SYSTEM_NOTE
    assert "<|im_start|>system" not in with_system.rendered_prompt
    assert (
        "<|im_start|>user\nYou are a helpful assistant.\n\nTell me a short story.<|im_end|>"
        in with_system.rendered_prompt
    )


def test_smoke_fails_on_nan_logits(parent: Path, tmp_path: Path) -> None:
    model = _copy(parent, tmp_path)
    _edit_weight(model, "model.norm.weight", lambda t: t.__setitem__(0, float("nan")))

    with pytest.raises(SmokeError, match="logits contain NaN") as info:
        run_smoke(model, SETTINGS)
    assert info.value.report is not None
    assert info.value.report.error == str(info.value)
    assert info.value.report.transcripts == []


def test_an_empty_reply_is_a_warning_and_fails_when_strict(parent: Path, tmp_path: Path) -> None:
    # A zero final norm makes every logit 0, so greedy decoding picks token 0 (<unk>), a special
    # token: the decoded reply is empty.
    model = _copy(parent, tmp_path)
    _edit_weight(model, "model.norm.weight", lambda t: t.zero_())

    report = run_smoke(model, SETTINGS)
    assert report.passed
    assert len(report.warnings) == len(SETTINGS.prompts)
    assert all("is degenerate: empty" in w for w in report.warnings)

    strict = SETTINGS.model_copy(update={"strict": True})
    with pytest.raises(SmokeError, match="degenerate: empty.*strict") as info:
        run_smoke(model, strict)
    assert info.value.report is not None and not info.value.report.passed


def test_one_token_repeated_is_degenerate(parent: Path) -> None:
    from transformers import AutoTokenizer

    from publisher.smoke import degenerate

    tokenizer = AutoTokenizer.from_pretrained(parent)
    word = tokenizer.encode("cat", add_special_tokens=False)[:1]
    repeated = word * 6 + [tokenizer.eos_token_id]
    assert "one token repeated 6 times" in degenerate(
        tokenizer, repeated, tokenizer.decode(repeated, skip_special_tokens=True)
    )
    varied = tokenizer.encode("the cat sat", add_special_tokens=False)
    assert degenerate(tokenizer, varied, "the cat sat") is None


def test_smoke_fails_when_two_greedy_runs_differ(parent: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from publisher.smoke import _converse

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(parent)
    model = AutoModelForCausalLM.from_pretrained(parent)
    # Noise on the logits stands in for a nondeterministic GPU kernel: files alone cannot make
    # greedy decoding on CPU vary, so the check is exercised on the loaded model.
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + 100 * torch.randn_like(out))
    with pytest.raises(SmokeError, match="two greedy runs of 'Hello' gave different replies"):
        _converse(tokenizer, model, SmokePrompt(user="Hello"), max_new_tokens=8, device="cpu")
