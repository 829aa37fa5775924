"""File digests, computed once per file version.

Stage inputs, local parents and pushes are compared by sha256. Weights run to many gigabytes, so
each file's digest is remembered by its stat (size, mtime, inode), in memory and in
`$PUBLISHER_CACHE_DIR/file-sha256.json` (default `~/.cache/publisher`), the way git's index
remembers what it has hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

RACY_WINDOW_NS = 2_000_000_000
"""A file modified this recently is not cached: a same-size rewrite within the filesystem's
timestamp granularity could keep its stamp (git's "racy" case)."""

_cache: dict[str, Any] | None = None
_cache_source: Path | None = None


def cache_file() -> Path:
    """Where digests persist between processes."""
    root = os.environ.get("PUBLISHER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "publisher"
    )
    return Path(root) / "file-sha256.json"


def _load() -> dict[str, Any]:
    global _cache, _cache_source
    source = cache_file()
    if _cache is None or _cache_source != source:
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        # Entries of files that are gone are dropped, once per process, so the file does not
        # grow without bound.
        data = data if isinstance(data, dict) else {}
        _cache = {k: v for k, v in data.items() if os.path.exists(k)}
        _cache_source = source
    return _cache


def _store(cache: dict[str, Any]) -> None:
    # Best effort: a read-only home only costs a re-hash next time.
    target = cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        pass


def sha256_file(path: Path) -> str:
    """The file's sha256, reused while its size, mtime and inode are unchanged."""
    path = Path(path)
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    cache = _load()
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if time.time_ns() - stat.st_mtime_ns > RACY_WINDOW_NS:
        cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
        _store(cache)
    return digest.hexdigest()
