"""The end-of-sweep results table: one row per trial (swept values, best metric, epochs run, status)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.core.tables import csv_text, markdown_table
from orchestrator.sweep.space import describe_value


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    swept: dict[str, Any]
    best: float            # best value of the sweep's metric (NaN when never reported)
    epochs: int
    status: str            # done | stopped early | error
    seconds: float = 0.0   # the trial's wall time (Tune's time_total_s)


def trial_status(error: bool, epochs: int, max_epochs: int) -> str:
    if error:
        return "error"
    return "done" if epochs >= max_epochs else "stopped early"


def rows_from_result_grid(grid, swept_keys: list[str], metric: str, mode: str, max_epochs: int) -> list[TrialRow]:
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        values = []
        if history is not None and metric in history:
            values = [v for v in history[metric].tolist() if isinstance(v, (int, float)) and math.isfinite(v)]
        best = (max(values) if mode == "max" else min(values)) if values else float("nan")
        metrics = result.metrics or {}
        # the last report may hand Tune the best model (it repeats the best epoch): count epochs by their number
        epoch_numbers = [e for e in history["epoch"].tolist() if isinstance(e, (int, float)) and math.isfinite(e)] \
            if history is not None and "epoch" in history else []
        epochs = int(max(epoch_numbers, default=metrics.get("epoch", len(values)) or 0))
        trial_id = str(metrics.get("trial_id") or result.path.rsplit("/", 1)[-1])
        rows.append(TrialRow(trial_id, {k: result.config.get(k) for k in swept_keys}, best, epochs,
                             trial_status(result.error is not None, epochs, max_epochs),
                             float(metrics.get("time_total_s", 0.0) or 0.0)))
    return sorted(rows, key=lambda r: [str(r.swept[k]) for k in swept_keys] + [r.trial_id])


def _cells(row: TrialRow, swept_keys: list[str]) -> list[str]:
    best = "n/a" if math.isnan(row.best) else f"{row.best:.2f}"
    return [row.trial_id, *(describe_value(row.swept[k]) for k in swept_keys), best, str(row.epochs), row.status,
            f"{row.seconds:.0f}"]


def headers(swept_keys: list[str], metric: str) -> list[str]:
    return ["trial", *swept_keys, f"best {metric}", "epochs", "status", "seconds"]


def format_text(rows: list[TrialRow], swept_keys: list[str], metric: str) -> str:
    """An aligned plain-text table for the terminal."""
    head = headers(swept_keys, metric)
    body = [_cells(r, swept_keys) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(c) for c in body)])


def format_markdown(rows: list[TrialRow], swept_keys: list[str], metric: str) -> str:
    return markdown_table(headers(swept_keys, metric), [_cells(r, swept_keys) for r in rows])


def format_csv(rows: list[TrialRow], swept_keys: list[str], metric: str) -> str:
    return csv_text(headers(swept_keys, metric),
                    [[r.trial_id, *(r.swept[k] for k in swept_keys), "" if math.isnan(r.best) else round(r.best, 4),
                      r.epochs, r.status, round(r.seconds, 1)] for r in rows])
