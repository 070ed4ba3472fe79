"""Figures pasted into the docs are today's: every report block in README.md and docs/ was made from sweeps whose
fingerprint today's defaults still give (orchestrator/sweep/fingerprint.py, orchestrator/tracking/paste.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.fingerprint import space_fingerprint
from orchestrator.tracking.paste import Provenance, blocks, paste

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def stale_blocks(document: Path) -> list[str]:
    out = []
    for provenance, _ in blocks(document.read_text()):
        for run in provenance.runs:
            today = space_fingerprint(str(ROOT / run["space"]), run["sets"])
            if today != run["fingerprint"]:
                out.append(f"{document.name}: the table '{provenance.name}' was made from runs of {run['space']} "
                           f"with fingerprint {run['fingerprint']}; today's defaults give {today}. Fix: run the "
                           f"sweep again and paste its table: {provenance.command}")
    return out


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_pasted_table_was_made_with_todays_defaults(document):
    assert stale_blocks(document) == []


def test_a_block_made_with_other_defaults_is_found_stale(tmp_path):
    """The check above can fail: a block whose fingerprint today's defaults do not give is reported."""
    doc = tmp_path / "doc.md"
    doc.write_text("# notes\n")
    run = {"experiment": "smoke", "space": "search_spaces/smoke.yaml", "sets": {}, "fingerprint": "0123456789ab"}
    provenance = Provenance("smoke", "python run.py report --experiment smoke --into doc.md", "2026-12-01", [run])
    paste(doc, provenance, "| a | b |\n|---|---|\n| 1 | 2 |")
    assert "*Made by `python run.py report --experiment smoke --into doc.md` on 2026-12-01" in doc.read_text()
    stale, = stale_blocks(doc)
    assert "made from runs of search_spaces/smoke.yaml with fingerprint 0123456789ab" in stale
    current = {**run, "fingerprint": space_fingerprint(str(ROOT / "search_spaces/smoke.yaml"))}
    paste(doc, Provenance("smoke", provenance.command, "2026-12-02", [current]), "| a |\n|---|\n| 3 |")
    assert stale_blocks(doc) == [] and doc.read_text().count("<!-- report ") == 1   # replaced, not appended
    assert doc.read_text().startswith("# notes\n")


def test_one_block_per_experiments_baseline_and_score():
    """The same sweeps compared with two baselines are two blocks; the same report run again is its own block."""
    from orchestrator.tracking.report import block_name

    assert block_name(["methods"], ["train.method=unimatch"], "final") == "methods@vs:train.method=unimatch@final"
    assert block_name(["methods"], ["train.method=supervised"], "final") != block_name(
        ["methods"], ["train.method=unimatch"], "final")
    assert block_name(["methods", "naive_ood"], None, "best") == "methods+naive_ood"
