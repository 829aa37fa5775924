"""The card for the model this project exists for renders offline, parents shown unresolved."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from publisher.cli import main

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "recipes" / "strangemerges-34-7b-slerp.yaml"


def test_seed_card_renders_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "card"
    assert main(["card", str(SEED), "--out", str(out)]) == 0, capsys.readouterr().err
    text = (out / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.base_model == [
        "ContextualAI/Contextual_KTO_Mistral_PairRM",
        "Gille/StrangeMerges_30-7B-slerp",
    ]
    assert card.data.license == "apache-2.0"
    assert card.data.base_model_relation == "merge"
    assert {"merge", "mergekit", "slerp"} <= set(card.data.tags)
    assert "unresolved" in text
    rows = [line for line in text.splitlines() if line.startswith("| 31 |")]
    assert rows and "0.700" in rows[0] and "1.000" in rows[0]
    assert "](schedule.png)" in text
    assert (out / "schedule.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert SEED.read_text() in text  # the exact recipe YAML
