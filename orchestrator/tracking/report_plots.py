"""The report's plots: each is drawn only when the swept keys make it meaningful (matplotlib Figures, no pyplot:
drawing them neither switches the caller's backend nor leaves figures open in its pyplot state).

- `miou_vs_ood_ratio.png`, `miou_vs_labels.png`: the score (mean ± std over seeds) against a swept key;
- with a baseline, `gain_vs_ood_ratio.png`, `gain_vs_labels.png`: the paired gain over the baseline with its
  95% confidence interval as the error bar;
- `tau_mask_ratio_miou.png`: τ against mask ratio and score;
- `gain_vs_teacher_quality.png`: the paired gain against the teacher's OOD precision (when trials logged it).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.core import atomic
from orchestrator.core.config import keys_with
from orchestrator.core.config_roles import INERT_WITHOUT_TEACHER_LABELS

TEACHER_PRECISION = "teacher_ood_precision"


@dataclass(frozen=True)
class ErrorbarPlot:
    """A plot against one swept key, drawn when that key varies."""

    key: str
    xlabel: str
    file: str
    gain_file: str
    logx: bool = False


ERRORBAR_PLOTS = (
    ErrorbarPlot("ood.ratio", "OOD share of the unlabeled batch (ood.ratio)", "miou_vs_ood_ratio.png",
                 "gain_vs_ood_ratio.png"),
    ErrorbarPlot("data.split", "labeled images (data.split)", "miou_vs_labels.png", "gain_vs_labels.png", logx=True),
)
TAU_KEY = "train.conf_thresh"
# The teacher's keys: those that matter only when the teacher labels the OOD stream (their role in
# orchestrator/core/config_roles.py); the teacher-quality plot labels its points with them.
TEACHER_KEYS: frozenset[str] = frozenset(keys_with(INERT_WITHOUT_TEACHER_LABELS))


@dataclass(frozen=True)
class PlotContext:
    groups: list            # report.Group
    keys: list[str]
    inert: str
    ylabel: str             # what the score is
    gains: dict             # group key -> PairedGain (empty without a baseline)
    baseline: str           # e.g. "train.method=unimatch"


def _figure(size: tuple[float, float]):
    """A Figure with one Axes, outside pyplot: its PNG is rendered by Agg whatever backend the caller uses."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots()


def plot_files(ctx: PlotContext, out: Path) -> list[Path]:
    made = []
    for plot in ERRORBAR_PLOTS:
        if plot.key not in ctx.keys:
            continue
        made.append(_errorbar_plot(_series(ctx, plot.key, _mean_std), plot, ctx.ylabel, out / plot.file))
        if ctx.gains:
            made.append(_errorbar_plot(_series(ctx, plot.key, _gain_point), plot,
                                       f"paired gain over {ctx.baseline}\n(95% CI)", out / plot.gain_file, zero=True))
    if TAU_KEY in ctx.keys:
        made.append(_tau_plot(ctx, out / "tau_mask_ratio_miou.png"))
    quality = _quality_series(ctx)
    if quality:
        made.append(_quality_plot(quality, ctx, out / "gain_vs_teacher_quality.png"))
    return made


def _mean_std(ctx: PlotContext, g) -> tuple[float, float, float] | None:
    return g.mean, g.std, g.std


def _gain_point(ctx: PlotContext, g) -> tuple[float, float, float] | None:
    """(gain, distance down to the CI's low end, up to its high end); a single pair has no bar."""
    gain = ctx.gains.get(g.key)
    if gain is None:
        return None
    if not math.isfinite(gain.low):
        return gain.mean, 0.0, 0.0
    return gain.mean, gain.mean - gain.low, gain.high - gain.mean


def _label(ctx: PlotContext, g, skip: int) -> str:
    return ", ".join(f"{k}={v}" for i, (k, v) in enumerate(zip(ctx.keys, g.key)) if i != skip and v != ctx.inert)


def _series(ctx: PlotContext, x_key: str, point: Callable) -> dict[str, list[tuple[float, ...]]]:
    """(x, y, err_low, err_high) points, one line per combination of the other keys."""
    xi = ctx.keys.index(x_key)
    lines: dict[str, list[tuple[float, ...]]] = {}
    for g in ctx.groups:
        try:
            x = float(g.key[xi])
        except (TypeError, ValueError):
            continue
        p = point(ctx, g)
        if p is not None:
            lines.setdefault(_label(ctx, g, xi), []).append((x, *p))
    return {k: sorted(v) for k, v in lines.items()}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic.replacing(path) as tmp:   # a full disk leaves no torn picture
        fig.savefig(tmp, dpi=120, format="png")
    return path


def _errorbar_plot(series: dict, plot: ErrorbarPlot, ylabel: str, path: Path, zero: bool = False) -> Path:
    fig, ax = _figure((6, 3.8))
    ticks: set[float] = set()
    for label, pts in series.items():
        xs, ys, lo, hi = zip(*pts)
        ticks.update(xs)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label or None)
    if zero:
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(ylabel, fontsize=8)
    if plot.logx:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])   # the swept values, not 2^k
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _tau_plot(ctx: PlotContext, path: Path) -> Path:
    """Score and the ID mask ratio against τ, on twin y-axes."""
    xi = ctx.keys.index(TAU_KEY)
    pts = sorted((float(g.key[xi]), statistics.fmean(g.mask_ratio) if g.mask_ratio else math.nan, g.mean)
                 for g in ctx.groups)
    fig, ax = _figure((5, 3.5))
    ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", color="C0", label="mIoU")
    ax.set_xlabel("τ (train.conf_thresh)")
    ax.set_ylabel(ctx.ylabel, color="C0", fontsize=8)
    twin = ax.twinx()
    twin.plot([p[0] for p in pts], [p[1] for p in pts], "s--", color="C1")
    twin.set_ylabel("mask ratio (ID pixels above τ)", color="C1")
    return _save(fig, path)


def _quality_series(ctx: PlotContext) -> dict[str, list[tuple[float, ...]]]:
    """(teacher OOD precision, gain, CI distances, the teacher keys' values) per group that has both; one line
    per combination of the keys other than the teacher's (so each label split gets its own line)."""
    teacher = [i for i, k in enumerate(ctx.keys) if k in TEACHER_KEYS]
    lines: dict[str, list[tuple[float, ...]]] = {}
    for g in ctx.groups:
        precision = g.extra.get(TEACHER_PRECISION)
        point = _gain_point(ctx, g)
        if not precision or point is None:
            continue
        label = ", ".join(f"{k}={v}" for i, (k, v) in enumerate(zip(ctx.keys, g.key))
                          if i not in teacher and v != ctx.inert)
        tag = ", ".join(f"{ctx.keys[i].split('.')[-1]}={g.key[i]}" for i in teacher if g.key[i] != ctx.inert)
        lines.setdefault(label, []).append((statistics.fmean(precision), *point, tag))
    return {k: sorted(v) for k, v in lines.items()}


def _quality_plot(series: dict, ctx: PlotContext, path: Path) -> Path:
    fig, ax = _figure((6, 3.8))
    for label, pts in series.items():
        xs, ys, lo, hi, tags = zip(*pts)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label or None)
        for x, y, tag in zip(xs, ys, tags):
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("teacher's OOD object precision (%)")
    ax.set_ylabel(f"paired gain over {ctx.baseline}\n({ctx.ylabel.split(' (')[0]}, 95% CI)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, path)

