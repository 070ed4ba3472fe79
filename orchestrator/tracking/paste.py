"""Report tables pasted into a Markdown file (`run.py report --into FILE`), each with where it came from.

A pasted block sits between two HTML comments; the opening one holds, as JSON, the report command, the date and,
for every sweep the table was made from, its space file, its `--set` overrides and the fingerprint of what its
runs were made with (orchestrator/sweep/fingerprint.py). The block starts with a visible line saying the same.
`run.py report --into` replaces the block of the same name (or appends it); tests/test_docs_fresh.py reads the
blocks of README.md and docs/ and fails when today's defaults would no longer give a block's fingerprint.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BLOCK = re.compile(r"<!-- report (\{.*?\}) -->\n.*?<!-- /report (\S+) -->", re.S)


@dataclass(frozen=True)
class Provenance:
    name: str                   # the block's name (the experiments, joined by +)
    command: str                # the `run.py report` command that made it
    date: str                   # YYYY-MM-DD
    runs: list[dict[str, Any]]  # per sweep: {"experiment", "space", "sets", "fingerprint"}

    def header(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "date": self.date, "runs": self.runs}

    def visible_line(self) -> str:
        sweeps = "; ".join(
            f"`python run.py sweep --space {r['space']}" + "".join(f" --set {k}={v}" for k, v in r["sets"].items())
            + f"` (fingerprint {r['fingerprint']})" for r in self.runs)
        return f"*Made by `{self.command}` on {self.date}, from the runs of {sweeps}.*"


def render_block(provenance: Provenance, markdown: str) -> str:
    header = json.dumps(provenance.header(), sort_keys=True)
    if "--" in header:   # an HTML comment cannot hold "--"; the command's flags do: escape them in the JSON
        header = header.replace("--", "\\u002d\\u002d")
    return f"<!-- report {header} -->\n{provenance.visible_line()}\n\n{markdown.strip()}\n<!-- /report {provenance.name} -->"


def blocks(text: str) -> list[tuple[Provenance, str]]:
    """Every pasted block of a document: (its provenance, its whole text)."""
    out = []
    for match in _BLOCK.finditer(text):
        head = json.loads(match.group(1))
        out.append((Provenance(head["name"], head["command"], head["date"], head["runs"]), match.group(0)))
    return out


def paste(path: Path, provenance: Provenance, markdown: str) -> None:
    """Replace the block of the same name in `path`, or append the block when the file has none."""
    from orchestrator.core import atomic

    text = path.read_text() if path.is_file() else ""
    block = render_block(provenance, markdown)
    old = [whole for found, whole in blocks(text) if found.name == provenance.name]
    text = text.replace(old[0], block) if old else (text.rstrip("\n") + "\n\n" + block + "\n").lstrip("\n")
    atomic.write_text(path, text)
