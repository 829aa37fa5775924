"""`make demo` end to end: the card a reader gets, the merge against its parents, the parents'
cached results reused by a second run, and the published `mergekit_config.yml` reproducing the
published weights with mergekit alone (parents served by the local Hub)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, snapshot_download
from test_seed_card import card_layout_problems

from publisher import hub as hub_module
from publisher.hub import run_files
from publisher.hubserver import LocalHub, hub_client_env

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = "publisher-demo/tiny-demo-slerp"
PARENTS = ("publisher-demo/tiny-base", "publisher-demo/tiny-tuned")


def _demo(out: Path) -> tuple[str, dict]:
    from publisher.demo import run_demo

    lines: list[str] = []
    assert run_demo(out, log=lines.append) == 0
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    return "\n".join(lines), manifest


def test_demo_publishes_a_reader_first_card_that_compares_and_reproduces(tmp_path):
    out = tmp_path / "demo"
    log, manifest = _demo(out)
    assert "model page:    http://127.0.0.1:" in log and "Traceback" not in log
    run_dir = out / "run"
    card = (run_dir / "README.md").read_text(encoding="utf-8")

    # The layout targets, a card huggingface_hub reads, no local address or path on it.
    assert card_layout_problems(card) == []
    assert ModelCard(card).data.base_model == list(PARENTS)
    # Parent links resolve on whatever Hub serves the card.
    for parent in PARENTS:
        assert f"]({'/' + parent})" in card

    # The merge beside both parents, with the delta to the better parent, per metric.
    header = next(line for line in card.splitlines() if line.startswith("| task |"))
    assert header == f"| task | metric | shots | this merge | {PARENTS[0]} | {PARENTS[1]} | Δ |"
    rows = [line for line in card.splitlines() if line.startswith("| publisher_tiny_qa |")]
    assert len(rows) == 2
    for line, metric in zip(rows, ("acc", "acc_norm"), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        merged = float(cells[3].split(" ± ")[0])
        parents = [float(c) for c in cells[4:6]]
        for parent, value in zip(PARENTS, parents, strict=True):
            path = run_dir / "eval" / "parents" / f"{parent.replace('/', '--')}.json"
            raw = json.loads(path.read_text())["results"]["publisher_tiny_qa"]
            assert f"{raw[f'{metric},none']:.4f}" == f"{value:.4f}"
        assert cells[6] == f"{merged - max(parents):+.4f}".replace("+0.0000", "±0.0000")
    # The model-index carries the merge's numbers only.
    merge_raw = json.loads((run_dir / "eval" / "results.json").read_text())["results"]
    index = {r.metric_type: r.metric_value for r in ModelCard(card).data.eval_results}
    assert index == {m: merge_raw["publisher_tiny_qa"][f"{m},none"] for m in ("acc", "acc_norm")}

    # First run: both parents evaluated, and cached.
    first = manifest["parent_eval"]
    assert {ref: e["cached"] for ref, e in first.items()} == dict.fromkeys(PARENTS, False)
    assert log.count("evaluated and cached") == 2

    with (
        LocalHub(out / "hub-data", token="t", user="publisher-demo") as server,
        hub_client_env(server.endpoint, token="t", hf_home=tmp_path / "hf-home"),
    ):
        local = Path(snapshot_download(REPO, cache_dir=tmp_path / "dl"))
        expected = run_files(run_dir)
        for name in (
            "model.safetensors",
            "README.md",
            "mergekit_config.yml",
            "publisher/card.json",
        ):
            assert name in expected
        assert {f"publisher/parents/{p.replace('/', '--')}.json" for p in PARENTS} <= set(expected)
        for name, path in expected.items():
            if name not in hub_module.VOLATILE:  # the manifest records the push after it
                assert (local / name).read_bytes() == path.read_bytes(), name
        # Every record the card links to was published.
        for link in re.findall(r"\]\((publisher/[^)]+)\)", card):
            assert (local / link).is_file(), link
        lock = json.loads((out / "recipes" / "tiny-demo-slerp.lock.json").read_text())
        shas = {parent_id: entry["revision"] for parent_id, entry in lock["parents"].items()}
        for parent_id, sha in shas.items():
            assert sha == HfApi().model_info(parent_id).sha  # pinned by SHA
        _reproduce_with_mergekit(local, shas, tmp_path / "again")

    # A second run from scratch reuses the parents' cached results: no evaluation runs for them.
    shutil.rmtree(run_dir)
    log, manifest = _demo(out)
    second = manifest["parent_eval"]
    assert {ref: e["cached"] for ref, e in second.items()} == dict.fromkeys(PARENTS, True)
    assert log.count("cached results reused") == 2 and "evaluated and cached" not in log
    for ref in PARENTS:
        assert second[ref]["seconds"] < first[ref]["seconds"] / 5
        assert second[ref]["key"] == first[ref]["key"]
    again = (run_dir / "README.md").read_text(encoding="utf-8")
    table = [line for line in card.splitlines() if line.startswith("| publisher_tiny_qa |")]
    assert [
        line for line in again.splitlines() if line.startswith("| publisher_tiny_qa |")
    ] == table


def test_demo_parents_are_a_base_and_its_near_copy(tmp_path):
    """As in real merges: every tensor of the tuned parent is the base's plus a small delta
    (the frozen embeddings exactly the base's)."""
    from safetensors.torch import load_file

    from publisher.tiny import build_demo_parents

    base, tuned = build_demo_parents(REPO_ROOT / "build" / "demo-parents")
    ours, theirs = (load_file(p / "model.safetensors") for p in (base, tuned))
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        delta = (theirs[name].float() - tensor.float()).norm() / tensor.float().norm()
        if name == "model.embed_tokens.weight":
            assert delta == 0, name
        else:
            assert 0 < delta < 0.1, (name, float(delta))


def test_demo_tokenizer_has_a_newline_token(tmp_path):
    """The chat template writes "\n" after every role and turn: it must be a token of its own,
    not <unk>, and decode back."""
    from publisher.tiny import build_tokenizer

    tokenizer = build_tokenizer(tmp_path, 384)
    ids = tokenizer.encode("Hi\nthere", add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == "Hi\nthere"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert tokenizer.unk_token_id not in tokenizer.encode(chat, add_special_tokens=False)


def _reproduce_with_mergekit(published: Path, shas: dict[str, str], out: Path) -> None:
    """`mergekit-yaml mergekit_config.yml OUT`, as the card says, downloads the pinned parents
    from the Hub (here the local one, through HF_ENDPOINT) and gives the published tensors."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    config = published / "mergekit_config.yml"
    for parent_id, sha in shas.items():
        assert f"{parent_id}@{sha}" in config.read_text(encoding="utf-8")
    command = Path(sys.executable).with_name("mergekit-yaml")
    done = subprocess.run(
        [str(command), str(config), str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    again = load_file(out / "model.safetensors")
    original = load_file(published / "model.safetensors")
    assert again.keys() == original.keys()
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype and again[name].equal(tensor), name
