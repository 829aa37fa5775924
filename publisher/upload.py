"""What a push may upload, checked before any Hub call.

Two checks guard the one commit `publisher.hub.push_run` makes:

- `check_allowed`: every file is on `ALLOWED_FILES`, the one declared list of what a published
  model holds (weights, config, tokenizer, chat template, card, image, the publisher's record),
  and is a regular file, not a symlink. A dotfile, a `.env`, a `hf_token.txt` or a
  `merged/.cache/...` that a stage left behind is refused, not skipped: the run is not what
  verify vouched for, so nothing is uploaded and no repo is created.
- `scan_secrets`: no file holds a secret of the job, plain, reversed or base64-encoded, nor
  anything shaped like a Hub token (`hf_...`). The secrets are the values of the environment
  variables that hold credentials (`is_secret_name`, plus the names listed in
  `PUBLISHER_SECRET_ENV`) and the token huggingface_hub will push with.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from publisher.errors import PublisherError

# Root-level model files besides the weights: config, tokenizer and chat template. A merge needs
# them from its parents, and the published model holds them.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
REPORTS_DIR = "publisher"
"""Run-directory reports travel in the repo under this folder (provenance for readers)."""
REPORT_FILES = (
    "recipe.yaml",
    "recipe.lock.json",
    "plan.json",
    "card.json",
    "smoke.json",
    "eval_results.json",
    "verify.json",
    "manifest.json",
)

# The one allow-list: (pattern of a path in the repo, what it is). Anything else is refused.
ALLOWED_FILES: tuple[tuple[str, str], ...] = (
    (r"model\.safetensors", "weights"),
    (r"model-\d{5}-of-\d{5}\.safetensors", "a weight shard"),
    (r"model\.safetensors\.index\.json", "the weight index"),
    ("|".join(re.escape(name) for name in MODEL_FILES), "config, tokenizer or chat template"),
    (r"[A-Za-z0-9][A-Za-z0-9_.-]*\.tiktoken", "a tiktoken vocabulary"),
    (r"mergekit_config\.yml", "mergekit's record of the merge"),
    (r"README\.md", "the model card"),
    (r"schedule\.png", "the schedule image"),
    (
        re.escape(REPORTS_DIR) + "/(" + "|".join(re.escape(n) for n in REPORT_FILES) + ")",
        "the publisher's record",
    ),
    (
        re.escape(REPORTS_DIR) + r"/parents/[A-Za-z0-9][A-Za-z0-9_.-]*\.json",
        "a parent's eval results",
    ),
)
_ALLOWED = re.compile("|".join(f"(?:{pattern})" for pattern, _ in ALLOWED_FILES))

# Weights are binary: only their header (JSON, which may carry free-form metadata) is text.
WEIGHT_SUFFIX = ".safetensors"
SAFETENSORS_HEADER_MAX = 100_000_000
# Environment variables whose values are credentials: names with one of these words (AUTH as a
# word of its own: GIT_AUTHOR_NAME is no secret).
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY|ACCESS_KEY|(?<![A-Z])AUTH(?![A-Z])"
)
SECRET_LIST_VAR = "PUBLISHER_SECRET_ENV"
"""Comma-separated names of more variables to treat as secrets (e.g. `HF_READ_KEY`)."""
MIN_SECRET_LENGTH = 8
# A Hub user access or OAuth token: `hf_` and 30+ letters and digits (today 34).
HUB_TOKEN = re.compile(rb"(?<![A-Za-z0-9_])hf_(?:oauth_)?[A-Za-z0-9]{30,}(?![A-Za-z0-9])")


class UploadRefused(PublisherError):
    """A file of the run may not be uploaded; the message names it and says what to do."""


def check_allowed(files: Mapping[str, Path]) -> None:
    """Refuse any `path in repo -> local file` not on `ALLOWED_FILES` or not a regular file."""
    unexpected = sorted(name for name in files if not _ALLOWED.fullmatch(name))
    if unexpected:
        shown = ", ".join(repr(name) for name in unexpected[:5])
        more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise UploadRefused(
            f"the run directory holds files a published model may not: {shown}{more}; nothing "
            "was uploaded. A push sends only weights, config, tokenizer, chat template, card, "
            "image and the publisher's record (publisher.upload.ALLOWED_FILES): remove the "
            "others and run verify again"
        )
    for name, path in files.items():
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
            raise UploadRefused(
                f"{path} ({name}) is {kind}; nothing was uploaded. A push sends regular files "
                "only: replace it with the file itself and run verify again"
            )


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    listed = {n.strip() for n in os.environ.get(SECRET_LIST_VAR, "").split(",") if n.strip()}
    return name in listed or bool(SECRET_NAME.search(name.upper()))


def environment_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`{variable: value}` of the secrets in the environment (values of 8+ characters)."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if is_secret_name(name) and len(value.strip()) >= MIN_SECRET_LENGTH
    }


def _encodings(secret: str) -> list[tuple[str, bytes]]:
    raw = secret.strip().encode()
    forms = [("", raw), ("reversed ", raw[::-1])]
    # base64 of a secret inside a longer text depends on where it starts modulo 3: encode it
    # at each offset and keep the characters made of its bits alone (6 bits each).
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + raw)
            stable = encoded[-(-8 * shift // 6) : 8 * (shift + len(raw)) // 6]
            if len(stable) >= MIN_SECRET_LENGTH:
                forms.append(("base64 ", stable))
    return forms


def scan_secrets(files: Mapping[str, Path], secrets: Mapping[str, str]) -> None:
    """Refuse when a file holds one of `secrets` ({name: value}) or a Hub token's shape.

    Weights are scanned in their safetensors header only (the tensors are binary); every other
    file in full.
    """
    needles = [
        (f"{form}{name}", encoded)
        for name, value in secrets.items()
        for form, encoded in _encodings(value)
    ]
    for repo_name, path in sorted(files.items()):
        data = _text_of(path)
        for what, needle in needles:
            if needle in data:
                raise UploadRefused(_leak(repo_name, f"the value of {what}"))
        if HUB_TOKEN.search(data):
            raise UploadRefused(_leak(repo_name, "something shaped like a Hub token (hf_...)"))


def _text_of(path: Path) -> bytes:
    if path.name.endswith(WEIGHT_SUFFIX):
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            return fh.read(min(size, SAFETENSORS_HEADER_MAX))
    return path.read_bytes()


def _leak(repo_name: str, what: str) -> str:
    return (
        f"{repo_name} holds {what}; nothing was uploaded. A template, task or recipe put a "
        "credential into the run: find where, remove it, revoke the token if it was ever "
        "published, and run the pipeline again"
    )


def check_upload(files: Mapping[str, Path], extra_secrets: Iterable[str] = ()) -> None:
    """`check_allowed`, then `scan_secrets` with the environment's secrets and `extra_secrets`."""
    check_allowed(files)
    secrets = environment_secrets()
    secrets.update({f"the Hub token ({i})": s for i, s in enumerate(extra_secrets, 1) if s})
    scan_secrets(files, secrets)
