"""The card for the model this project exists for renders offline, reader first.

`card_layout_problems` is the layout contract every default card meets (the demo test uses it
too): the usage snippet within the first 60 lines of Markdown (after the front matter), at most
350 words of visible text outside `<details>`, and no local address or path in the rendered
HTML.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import ModelCard

from publisher.cli import main

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "recipes" / "strangemerges-34-7b-slerp.yaml"
USAGE_BY_LINE = 60
MAX_VISIBLE_WORDS = 350
LOCAL = re.compile(
    r"127\.0\.0\.1|localhost|0\.0\.0\.0|file://|/tmp/|/home/|/root/|/Users/|/runner/|"
    r"\bruns/|hub-data|\.venv|publisher lock|publisher run"
)


def visible_words(text: str) -> int:
    """Words a reader sees without opening a `<details>`: the text of the body rendered to
    HTML (no front matter, table pipes, link targets or comments), `<details>` blocks removed."""
    import html as html_lib

    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").enable("table").render(text.split("\n---\n", 1)[1])
    rendered = re.sub(r"<details>.*?</details>", "", rendered, flags=re.S)
    rendered = re.sub(r"<!--.*?-->|<[^>]+>", " ", rendered, flags=re.S)
    return len(html_lib.unescape(rendered).split())


def card_layout_problems(text: str) -> list[str]:
    from markdown_it import MarkdownIt

    problems = []
    # Lines of Markdown: the body after the front matter, whose model-index grows with the suite.
    lines = text.split("\n---\n", 1)[1].split("\n")
    usage = next((i for i, line in enumerate(lines, 1) if line.startswith("```python")), None)
    if usage is None or usage > USAGE_BY_LINE:
        problems.append(f"the usage snippet starts at line {usage}, not within {USAGE_BY_LINE}")
    if visible_words(text) > MAX_VISIBLE_WORDS:
        problems.append(f"{visible_words(text)} visible words, over {MAX_VISIBLE_WORDS}")
    html = MarkdownIt("commonmark").enable("table").render(text.split("\n---\n", 1)[1])
    problems += [f"the HTML holds {m!r}" for m in sorted(set(LOCAL.findall(html)))]
    return problems


def test_seed_preview_card_is_reader_first_and_honest(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "card"
    assert main(["card", str(SEED), "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    text = (out / "README.md").read_text()
    assert card_layout_problems(text) == []
    card = ModelCard(text)
    assert card.data.base_model == [
        "ContextualAI/Contextual_KTO_Mistral_PairRM",
        "Gille/StrangeMerges_30-7B-slerp",
    ]
    assert card.data.license == "apache-2.0"
    assert card.data.base_model_relation == "merge"
    assert card.data.language == ["en"]  # the seed recipe gives it
    assert {"merge", "mergekit", "slerp"} <= set(card.data.tags)
    assert "text-generation" not in card.data.tags  # the pipeline tag already says it
    # The parents are unpinned: the card says so plainly, the operator is told what to do.
    assert text.count("| not pinned |") == 2 and "pinned to the revisions" not in text
    assert "note: parent ContextualAI/Contextual_KTO_Mistral_PairRM is not pinned" in printed
    assert "; parent Gille/StrangeMerges_30-7B-slerp is not pinned" in printed
    assert "cannot be pushed" in printed
    assert printed.count("publisher lock") == 1  # the advice once, for both parents
    # Reader order: description, parents, usage, then the long parts folded away.
    order = [text.index(s) for s in ("# StrangeMerges", "## Parents", "## Usage", "<details>")]
    assert order == sorted(order)
    assert "Context length: 32768 tokens." in text
    rows = [line for line in text.splitlines() if line.startswith("| 31 |")]
    assert rows == ["| 31 | 0.700 `███████░░░` | 1.000 `██████████` |"]
    assert "`default` tensors use t = 0.500 in every layer." in text
    assert "](schedule.png)" in text.split("<details>")[0]  # the picture stays visible
    assert (out / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SEED.read_text().rstrip("\n") in text  # the exact recipe YAML
    assert "## Limitations and intended use" in text and "no training of its own" in text
