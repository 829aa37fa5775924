"""The run directory: how stages hand work to each other, as files.

RUN_DIR/
  recipe.yaml          the recipe, byte for byte
  recipe.lock.json     its lock, when the recipe has one
  plan.json            the layer-wise t plan (schedule stage)
  merged/              weights, config, tokenizer, chat template (merge stage)
  weights.json         every tensor re-merged and compared with the stored one (weights stage)
  smoke.json           chat-template smoke test (smoke stage)
  eval/results.json    lm-eval's full output (eval stage)
  eval/parents/*.json  each parent's lm-eval output on the same tasks (eval stage)
  verify.json          what was checked before publishing (verify stage)
  README.md            the model card (card stage)
  card.json            the data the card was rendered from (what verify checks)
  schedule.png         the schedule picture the card shows
  manifest.json        per-stage status, timings, input hashes, tool versions, hardware
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CARD_NAME = "README.md"
CARD_DATA_NAME = "card.json"
IMAGE_NAME = "schedule.png"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def lock(self) -> Path:
        return self.root / "recipe.lock.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def weights(self) -> Path:
        return self.root / "weights.json"

    @property
    def smoke(self) -> Path:
        return self.root / "smoke.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_results(self) -> Path:
        return self.eval_dir / "results.json"

    def parent_eval(self, ref: str) -> Path:
        """Where a parent's lm-eval output goes, e.g. `eval/parents/org--name.json` (a local
        directory by its last part only: the file is published, its path is not)."""
        repo = ref.partition("@")[0]
        if repo.startswith((".", "/", "~")) or repo.count("/") > 1:
            repo = Path(repo).name
        slug = repo.replace("/", "--")
        return self.eval_dir / "parents" / f"{slug}.json"

    def parent_evals(self) -> list[Path]:
        folder = self.eval_dir / "parents"
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    @property
    def verify(self) -> Path:
        return self.root / "verify.json"

    @property
    def card(self) -> Path:
        return self.root / CARD_NAME

    @property
    def card_data(self) -> Path:
        return self.root / CARD_DATA_NAME

    @property
    def image(self) -> Path:
        return self.root / IMAGE_NAME

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def merged_on(self) -> str:
        """The device the merge ran on, as the merge stage recorded it in `manifest.json`, e.g.
        `"cpu"`; `"unknown"` when it is not recorded."""
        import json

        try:
            return str(json.loads(self.manifest.read_text(encoding="utf-8"))["merged_on"])
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown"

    def ensure(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def verified_files(self) -> dict[str, str]:
        """sha256 of each file verify vouches for, by path in the run directory.

        The weights, tokenizer and config (`merged/`), the card and its image, and the reports
        the card shows. `verify.json` records them; a push compares them again, so nothing
        changed after verify reaches the Hub.
        """
        from publisher.digests import sha256_file

        files = (
            sorted(p for p in self.merged.rglob("*") if p.is_file()) if self.merged.is_dir() else []
        )
        files += [
            f
            for f in (
                self.card,
                self.card_data,
                self.image,
                self.plan,
                self.smoke,
                self.eval_results,
            )
            if f.exists()
        ]
        files += self.parent_evals()
        return {f.relative_to(self.root).as_posix(): sha256_file(f) for f in files}
