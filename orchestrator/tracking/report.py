"""`run.py report`: turn sweeps' MLflow runs into grouped tables (mean ± std over seeds) and plots.

Tables: one row per group of the swept keys; when `data.split` is swept, the paper's layout too (rows =
methods, columns = label splits); and per-class IoU (last epoch) per group. Several experiments can be
merged (e.g. `methods` and `naive_ood`), so a baseline run as its own sweep sits in the same table.
Pure parts (`group_rows`, `format_*`) take plain dicts; `collect_trials` is the only MLflow read and
`write_report` the only writer, so the numbers are tested on hand-made rows.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tracking import client as mlflow_runs
from orchestrator.core import atomic
from orchestrator.core.errors import UserError
from orchestrator.core.tables import csv_text, markdown_table

SEED_KEYS = ("seed",)
METRIC = "best_val_miou"
SPLIT_KEY = "data.split"
CLASS_PREFIX = "val_iou."
INERT = "–"   # shown for a key that does not affect the run (e.g. ood.* of a method without an OOD stream)


@dataclass(frozen=True)
class Group:
    key: tuple                  # values of the grouping params, in `keys` order
    values: list[float]         # the metric of each run in the group (one per seed)
    mask_ratio: list[float]
    per_class: dict[str, list[float]] = field(default_factory=dict)   # class -> last-epoch IoU per run

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params with inert keys blanked: `ood.*` does nothing without an OOD stream (supervised, unimatch), so
    a supervised run of one sweep and of another group together whatever their ood.label_source says."""
    if params.get("train.method") in ("supervised", "unimatch"):
        return {k: (INERT if k.startswith("ood.") else v) for k, v in params.items()}
    return dict(params)


def grouping_keys(trials: list[dict[str, Any]]) -> list[str]:
    """Params that differ between trials, except seeds (they are what the mean and std run over)."""
    params = [effective_params(t["params"]) for t in trials]
    keys = sorted({k for p in params for k in p})
    # a key counts when its *effective* values differ: ood.ratio fixed for SemiOVS and inert elsewhere is no
    # axis, nor is a key that runs of older code did not record (missing beside one value)
    return [k for k in keys if k not in SEED_KEYS and len({p.get(k) for p in params} - {INERT, None}) > 1]


def group_rows(trials: list[dict[str, Any]], keys: list[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for t in trials:
        if METRIC not in t["metrics"]:
            continue
        params = effective_params(t["params"])
        key = tuple(params.get(k) for k in keys)
        g = groups.setdefault(key, Group(key, [], []))
        g.values.append(t["metrics"][METRIC])
        if "mask_ratio" in t["metrics"]:
            g.mask_ratio.append(t["metrics"]["mask_ratio"])
        for name, value in t["metrics"].items():
            if name.startswith(CLASS_PREFIX):
                g.per_class.setdefault(name[len(CLASS_PREFIX):], []).append(value)
    return sorted(groups.values(), key=lambda g: tuple(_sortable(v) for v in g.key))


def _sortable(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def format_markdown(groups: list[Group], keys: list[str]) -> str:
    return markdown_table([*keys, "runs", f"{METRIC} (mean ± std)"],
                           [[*g.key, len(g.values), f"{g.mean:.2f} ± {g.std:.2f}"] for g in groups])


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def format_by_split(groups: list[Group], keys: list[str]) -> str:
    """The paper's layout: a row per combination of the other keys (methods), a column per label split."""
    if SPLIT_KEY not in keys or len(keys) < 2:
        return ""
    si = keys.index(SPLIT_KEY)
    row_keys = [k for k in keys if k != SPLIT_KEY]
    splits = sorted({g.key[si] for g in groups}, key=_sortable)
    rows: dict[tuple, dict[Any, Group]] = {}
    for g in groups:
        rows.setdefault(tuple(v for i, v in enumerate(g.key) if i != si), {})[g.key[si]] = g
    ordered = sorted(rows.items(), key=lambda kv: tuple(_sortable(v) for v in kv[0]))
    return markdown_table([*row_keys, *(f"{s} labels" for s in splits)],
                           [[*row, *(_cell(by_split[s].values) if s in by_split else "" for s in splits)]
                            for row, by_split in ordered])


def format_per_class(groups: list[Group], keys: list[str]) -> str:
    """Per-class IoU (last epoch, mean ± std over seeds) per group: which classes a method helps or hurts."""
    classes = list(dict.fromkeys(c for g in groups for c in g.per_class))
    if not classes:
        return ""
    return markdown_table([*keys, *classes],
                           [[*g.key, *(_cell(g.per_class.get(c, [])) for c in classes)] for g in groups])


def format_csv(groups: list[Group], keys: list[str]) -> str:
    return csv_text([*keys, "runs", f"{METRIC}_mean", f"{METRIC}_std"],
                    [[*g.key, len(g.values), round(g.mean, 4), round(g.std, 4)] for g in groups])


def collect_trials(uri: str, experiment: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(parent run id, trials) of a sweep; a trial re-run after a resume counts once (newest run)."""
    experiment_id = mlflow_runs.experiment_id_of(uri, experiment)
    if experiment_id is None:
        raise UserError(f"no MLflow experiment '{experiment}' in {uri}. Fix: pass the sweep's --name as "
                        f"--experiment, and the --tracking-uri it logged to.")
    parents = mlflow_runs.find_runs(uri, experiment_id, role=mlflow_runs.ROLE_SWEEP)
    trials = mlflow_runs.trial_runs(uri, experiment_id)
    if not trials:
        raise UserError(f"experiment '{experiment}' has no trial runs yet. Fix: wait for a trial to report.")
    return (parents[0].info.run_id if parents else None), trials


@dataclass(frozen=True)
class ErrorbarPlot:
    """A plot of the metric (mean ± std) against one swept key, drawn when that key varies."""

    key: str
    xlabel: str
    file: str
    logx: bool = False


ERRORBAR_PLOTS = (
    ErrorbarPlot("ood.ratio", "OOD share of the unlabeled batch (ood.ratio)", "miou_vs_ood_ratio.png"),
    ErrorbarPlot(SPLIT_KEY, "labeled images (data.split)", "miou_vs_labels.png", logx=True),
)
TAU_KEY = "train.conf_thresh"


def plot_files(groups: list[Group], keys: list[str], out: Path) -> list[Path]:
    """The plots that the swept keys make meaningful (each needs its x-axis key to vary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [_errorbar_plot(plt, groups, keys, plot, out / plot.file) for plot in ERRORBAR_PLOTS if plot.key in keys]
    if TAU_KEY in keys:
        made.append(_tau_plot(plt, groups, keys, out / "tau_mask_ratio_miou.png"))
    return made


def _series(groups: list[Group], keys: list[str], x_key: str) -> dict[str, list[tuple[float, float, float]]]:
    """(x, mean, std) points, one line per combination of the other keys (so merged sweeps never share a line)."""
    xi = keys.index(x_key)
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for g in groups:
        try:
            x = float(g.key[xi])
        except (TypeError, ValueError):
            continue
        label = ", ".join(f"{k}={v}" for i, (k, v) in enumerate(zip(keys, g.key)) if i != xi and v != INERT)
        lines.setdefault(label, []).append((x, g.mean, g.std))
    return {k: sorted(v) for k, v in lines.items()}


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        with atomic.replacing(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def _errorbar_plot(plt, groups: list[Group], keys: list[str], plot: ErrorbarPlot, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ticks: set[float] = set()
    for label, pts in _series(groups, keys, plot.key).items():
        xs, ys, es = zip(*pts)
        ticks.update(xs)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label or None)
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel("best val mIoU (%)")
    if plot.logx:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])   # the swept values, not 2^k
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _tau_plot(plt, groups: list[Group], keys: list[str], path: Path) -> Path:
    """mIoU and the ID mask ratio against τ, on twin y-axes."""
    xi = keys.index(TAU_KEY)
    pts = sorted((float(g.key[xi]), statistics.fmean(g.mask_ratio) if g.mask_ratio else math.nan, g.mean)
                 for g in groups)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", color="C0", label="mIoU")
    ax.set_xlabel("τ (train.conf_thresh)")
    ax.set_ylabel("best val mIoU (%)", color="C0")
    twin = ax.twinx()
    twin.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="C1")
    twin.set_ylabel("mask ratio (ID pixels above τ)", color="C1")
    return _save(plt, fig, path)


def report_markdown(title: str, groups: list[Group], keys: list[str]) -> str:
    parts = [f"# {title}\n", f"{METRIC} (%), mean ± std over seeds, one row per group of swept keys:\n",
             format_markdown(groups, keys)]
    by_split = format_by_split(groups, keys)
    if by_split:
        parts += ["\nThe same, rows = the other keys, columns = label splits (the paper's layout):\n", by_split]
    per_class = format_per_class(groups, keys)
    if per_class:
        parts += ["\nPer-class val IoU (%) at the last epoch, mean ± std over seeds:\n", per_class]
    return "\n".join(parts)


def write_report(uri: str, experiments: list[str] | str, out_dir: Path) -> dict[str, Any]:
    """Report on one sweep, or on several merged into one table (their trials grouped together)."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    parents, trials = [], []
    for name in names:
        parent, found = collect_trials(uri, name)
        parents += [parent] if parent else []
        trials += found
    keys = grouping_keys(trials)
    groups = group_rows(trials, keys)
    title = " + ".join(names)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / "report.md", out_dir / "report.csv"]
        atomic.write_text(files[0], report_markdown(title, groups, keys))
        atomic.write_text(files[1], format_csv(groups, keys))
        files += plot_files(groups, keys, out_dir)
    except OSError as err:
        if atomic.is_no_space(err):   # each file is whole or absent: the same command rewrites them all
            raise atomic.no_space_error(out_dir, "writing the report") from None
        raise
    for parent in parents:
        mlflow_runs.log_files(uri, parent, files, "report")
    return {"experiment": title, "trials": len(trials), "groups": len(groups), "keys": keys,
            "files": [str(f) for f in files], "table": files[0].read_text()}
