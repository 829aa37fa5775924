"""Fuzz: a few hundred mutated recipes (seeded, so every run is the same) never crash or hang.

Each one validates or fails with `FILE:LINE:COL: message` lines that point into the file and
hold no raw control character; "unexpected" (the catch-all for a bug) never appears.
"""

from __future__ import annotations

import random
import re
import time

from publisher.recipe import RecipeError, load_recipe
from tests.test_recipe_bounds import deadline

BASE = """\
slices:
  - sources:
      - model: org/base
        layer_range: [0, 4]
      - model: org/other
        layer_range: [0, 4]
    parameters:
      t: [0, 1]
merge_method: slerp
base_model: org/base
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - value: 0.5
dtype: float32
publish:
  repo_id: someone/fuzzed
  license: apache-2.0
  tags: [a, b]
  templates: null
  smoke:
    prompts:
      - {user: hi, system: be brief}
    max_new_tokens: 8
  eval:
    suite: tiny
    limit: 10
    batch_size: auto
    include_paths: []
  merge: {out_shard_size: 5B, cuda: false}
"""

VALUES = [
    "",
    "null",
    "[]",
    "{}",
    "-1",
    "0",
    "1e999",
    ".nan",
    ".inf",
    "*x",
    "&x [1, *x]",
    "'\\x07'",
    '"\\n::error file=/etc/passwd::"',
    "[[[[",
    "{a: [b",
    "!!python/object/apply:os.system [id]",
    "!function x.y",
    "~",
    "yes",
    "0x10",
    "99999999999999999999",
    "/etc",
    "../..",
    "- a",
    "'5B'",
    "[0, 4, 8]",
    "[4, 0]",
    "{filter: mlp}",
    "[{value: 2}]",
    '"\\u2028"',
    "`x`",
    "%s%n",
    "é",
]
CHARS = [":", "-", "[", "]", "{", "}", "&", "*", "!", "\t", " ", "#", "'", '"', "\x07", "%", "\n"]
COUNT = 300
LINE_RE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): \S")


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        op = rng.randrange(7)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3 and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(VALUES)}"
        elif op == 4:
            at = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:at] + rng.choice(CHARS) + lines[i][at:]
        elif op == 5:
            lines[i] = (" " * rng.choice([0, 1, 2, 4])) + lines[i].lstrip()
        else:
            lines[i] = re.sub(r"[a-z]", lambda m: rng.choice("aeiouxz_"), lines[i], count=1)
        if not lines:
            lines = [""]
    return "\n".join(lines)


def test_mutated_recipes_never_crash_or_hang(tmp_path):
    rng = random.Random(20261129)
    path = tmp_path / "fuzzed.yaml"
    path.write_text(BASE, encoding="utf-8")
    load_recipe(path)  # valid as it stands; and mergekit's imports are not timed below
    started = time.process_time()
    invalid = 0
    for n in range(COUNT):
        text = mutate(BASE, rng)
        path.write_text(text, encoding="utf-8")
        try:
            with deadline(5):
                load_recipe(path)
        except RecipeError as err:
            invalid += 1
            assert err.problems, text
            for problem in err.problems:
                line = str(problem)
                assert LINE_RE.match(line), (n, text, line)
                assert 1 <= problem.line <= text.count("\n") + 2, (n, text, line)
                assert "cannot validate recipe: unexpected" not in line, (n, text, line)
                assert line.isprintable(), (n, text, line)
    # most mutations break the recipe; a few leave it valid (a comment, a harmless duplicate)
    assert invalid > COUNT // 2
    assert time.process_time() - started < 30  # CPU seconds: the machine may be shared
