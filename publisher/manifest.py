"""`manifest.json`: what a run records, stage by stage, and where it ran.

Each stage's record holds its status, timing, outputs and a hash of its inputs (`hash_inputs`), so
`publisher.pipeline` can skip a stage whose inputs are unchanged; the manifest also records the
tool versions and the hardware of the run, and `stage_table` shows the records as Markdown.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from publisher.digests import sha256_file
from publisher.settings import STAGES

TOOLS = ("publisher", "mergekit", "transformers", "torch", "huggingface_hub", "lm_eval", "jinja2")


@dataclass
class StageRecord:
    """One stage's entry in `manifest.json`."""

    status: str  # "ok", "failed" or "skipped" (ok earlier, inputs unchanged)
    input_hash: str
    seconds: float = 0.0
    finished_at: str = ""
    error: str | None = None
    outputs: list[str] = field(default_factory=list)


def hash_inputs(*parts: Any) -> str:
    """A content hash of stage inputs: files and directories by bytes, other values by JSON."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_dir():
                for file in sorted(p for p in part.rglob("*") if p.is_file()):
                    digest.update(str(file.relative_to(part)).encode())
                    digest.update(sha256_file(file).encode())
            elif part.exists():
                digest.update(sha256_file(part).encode())
            else:
                digest.update(b"<missing>")
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


@functools.cache
def tool_versions() -> dict[str, str]:
    # Cached, and read from modules already imported where they say: each metadata lookup
    # scans site-packages, which a merge's start-up should not pay for (mergekit says nothing).
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        module = sys.modules.get(name)
        known = getattr(module, "__version__", None) if module else None
        if isinstance(known, str):
            versions[name] = known
            continue
        dist = {"lm_eval": "lm-eval", "huggingface_hub": "huggingface_hub"}.get(name, name)
        try:
            versions[name] = version(dist)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware(device: str = "cpu") -> dict[str, Any]:
    """The machine, for the manifest. CUDA is probed only for a CUDA run (`cuda` None: not
    probed): initialising it costs a CPU run's start-up time for nothing."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cuda": None,
    }
    if not device.startswith("cuda"):
        return info
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # torch is a dependency, but the manifest must not need it
        info["cuda"] = False
    return info


class Manifest:
    """`manifest.json`: per-stage records plus tool versions and hardware."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                self.data = {"stages": {}}
        self.data.setdefault("stages", {})

    def record(self, stage: str) -> StageRecord | None:
        raw = self.data["stages"].get(stage)
        return StageRecord(**raw) if raw else None

    def set(self, stage: str, record: StageRecord) -> None:
        self.data["stages"][stage] = record.__dict__.copy()
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")

    def is_current(self, stage: str, input_hash: str) -> bool:
        """The stage succeeded on these inputs and its outputs are still in the run directory."""
        rec = self.record(stage)
        return (
            rec is not None
            and rec.status in ("ok", "skipped")
            and rec.input_hash == input_hash
            and all((self.path.parent / output).exists() for output in rec.outputs or [])
        )


def now() -> str:
    """The time a stage finished, as its record says it: UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stage_table(manifest_path: Path) -> str:
    """Markdown table of stage statuses and timings (for the Actions job summary)."""
    data = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    lines = ["| stage | status | seconds |", "|---|---|---:|"]
    for stage in STAGES:
        rec = data["stages"].get(stage)
        if rec:
            lines.append(f"| {stage} | {rec['status']} | {rec['seconds']:.1f} |")
    return "\n".join(lines)
