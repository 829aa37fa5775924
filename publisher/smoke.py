"""Smoke test: does the merged model chat? Render each prompt through the chat template, generate.

Writes `smoke.json` in the run directory (see `SmokeReport`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
    """

    user: str
    system: str | None
    rendered_prompt: str
    reply: str
    new_tokens: int
    seconds: float
    tokens_per_second: float


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
    """

    passed: bool
    transcripts: list[SmokeTranscript] = field(default_factory=list)
    max_new_tokens: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    error: str | None = None

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> SmokeReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["transcripts"] = [SmokeTranscript(**t) for t in data.get("transcripts", [])]
        return cls(**data)
