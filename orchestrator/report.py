"""`run.py report`: turn a sweep's MLflow runs into a grouped table (mean ± std over seeds) and plots.

Pure parts (`group_rows`, `format_*`) take plain dicts; `collect_trials` is the only MLflow read and
`write_report` the only writer, so the numbers are tested on hand-made rows.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.errors import UserError

SEED_KEYS = ("seed",)
METRIC = "best_val_miou"


@dataclass(frozen=True)
class Group:
    key: tuple                  # values of the grouping params, in `keys` order
    values: list[float]         # the metric of each run in the group (one per seed)
    mask_ratio: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def grouping_keys(trials: list[dict[str, Any]]) -> list[str]:
    """Params that differ between trials, except seeds (they are what the mean and std run over)."""
    keys = sorted({k for t in trials for k in t["params"]})
    return [k for k in keys if k not in SEED_KEYS and len({t["params"].get(k) for t in trials}) > 1]


def group_rows(trials: list[dict[str, Any]], keys: list[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for t in trials:
        if METRIC not in t["metrics"]:
            continue
        key = tuple(t["params"].get(k) for k in keys)
        g = groups.setdefault(key, Group(key, [], []))
        g.values.append(t["metrics"][METRIC])
        if "mask_ratio" in t["metrics"]:
            g.mask_ratio.append(t["metrics"]["mask_ratio"])
    return sorted(groups.values(), key=lambda g: tuple(_sortable(v) for v in g.key))


def _sortable(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def format_markdown(groups: list[Group], keys: list[str]) -> str:
    head = [*keys, "runs", f"{METRIC} (mean ± std)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        lines.append("| " + " | ".join([*(str(v) for v in g.key), str(len(g.values)),
                                         f"{g.mean:.2f} ± {g.std:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def format_csv(groups: list[Group], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*keys, "runs", f"{METRIC}_mean", f"{METRIC}_std"])
    for g in groups:
        w.writerow([*g.key, len(g.values), round(g.mean, 4), round(g.std, 4)])
    return buf.getvalue()


def collect_trials(uri: str, experiment: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(parent run id, trials) of a sweep; a trial re-run after a resume counts once (newest run)."""
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment '{experiment}' in {uri}. Fix: pass the sweep's --name as "
                        f"--experiment, and the --tracking-uri it logged to.")
    parents = tracking.find_runs(uri, exp.experiment_id, role=tracking.ROLE_SWEEP)
    trials, seen = [], set()
    for run in tracking.find_runs(uri, exp.experiment_id, role=tracking.ROLE_TRIAL):  # newest first
        trial_id = run.data.tags.get("trial_id", run.info.run_id)
        if trial_id in seen:
            continue
        seen.add(trial_id)
        trials.append({"trial_id": trial_id, "params": dict(run.data.params), "metrics": dict(run.data.metrics),
                       "status": run.info.status})
    if not trials:
        raise UserError(f"experiment '{experiment}' has no trial runs yet. Fix: wait for a trial to report.")
    return (parents[0].info.run_id if parents else None), trials


def plot_files(groups: list[Group], keys: list[str], out: Path) -> list[Path]:
    """The plots that the swept keys make meaningful (each needs its x-axis key to vary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def series(x_key: str, by_key: str | None):
        xi = keys.index(x_key)
        bi = keys.index(by_key) if by_key in keys else None
        lines: dict[Any, list[tuple[float, float, float]]] = {}
        for g in groups:
            try:
                x = float(g.key[xi])
            except (TypeError, ValueError):
                continue
            lines.setdefault(g.key[bi] if bi is not None else "", []).append((x, g.mean, g.std))
        return {k: sorted(v) for k, v in lines.items()}

    def errorbar_plot(x_key: str, by_key: str, xlabel: str, name: str, logx: bool = False):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, pts in series(x_key, by_key).items():
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{by_key}={label}" if label != "" else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("best val mIoU (%)")
        if logx:
            ax.set_xscale("log", base=2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)

    if "ood.ratio" in keys:
        errorbar_plot("ood.ratio", "data.split", "OOD share of the unlabeled batch (ood.ratio)", "miou_vs_ood_ratio.png")
    if "data.split" in keys:
        errorbar_plot("data.split", "train.method", "labeled images (data.split)", "miou_vs_labels.png", logx=True)
    if "train.conf_thresh" in keys:
        xi = keys.index("train.conf_thresh")
        pts = sorted((float(g.key[xi]), statistics.fmean(g.mask_ratio) if g.mask_ratio else math.nan, g.mean)
                     for g in groups)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", color="C0", label="mIoU")
        ax.set_xlabel("τ (train.conf_thresh)")
        ax.set_ylabel("best val mIoU (%)", color="C0")
        twin = ax.twinx()
        twin.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="C1")
        twin.set_ylabel("mask ratio (ID pixels above τ)", color="C1")
        fig.tight_layout()
        path = out / "tau_mask_ratio_miou.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)
    return made


def write_report(uri: str, experiment: str, out_dir: Path) -> dict[str, Any]:
    parent, trials = collect_trials(uri, experiment)
    keys = grouping_keys(trials)
    groups = group_rows(trials, keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "report.md", out_dir / "report.csv"]
    files[0].write_text(f"# {experiment}\n\n" + format_markdown(groups, keys))
    files[1].write_text(format_csv(groups, keys))
    files += plot_files(groups, keys, out_dir)
    if parent:
        for f in files:
            tracking.client(uri).log_artifact(parent, str(f), "report")
    return {"experiment": experiment, "trials": len(trials), "groups": len(groups), "keys": keys,
            "files": [str(f) for f in files], "table": format_markdown(groups, keys)}
