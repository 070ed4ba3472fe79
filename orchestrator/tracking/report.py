"""`run.py report`: turn sweeps' MLflow runs into grouped tables (mean ± std over seeds), paired gains and plots.

Tables: one row per group of the swept keys; when `data.split` is swept, the paper's layout too (rows =
methods, columns = label splits); and per-class IoU (last epoch) per group. Several experiments can be
merged (e.g. `methods` and `naive_ood`), so a baseline run as its own sweep sits in the same table.
With `--baseline key=value`, each group is also compared with the baseline group run with the same seeds
(orchestrator.tracking.paired): mean paired gain, its 95% t interval, and the seeds that gained.
`--score` picks the number compared (orchestrator.tracking.scoring): best epoch, last epoch, or a last-k mean.
Pure parts (`group_rows`, `paired_gains`, `format_*`) take plain dicts; `collect_trials` is the only MLflow
read and `write_report` the only writer, so the numbers are tested on hand-made rows.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.core import atomic
from orchestrator.core import config_roles as roles
from orchestrator.core.config import keys_with
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking import paired
from orchestrator.tracking.paste import Provenance, paste
from orchestrator.tracking.report_plots import TEACHER_PRECISION, PlotContext, plot_files
from orchestrator.tracking.scoring import PER_EPOCH, Score, parse_score, score_of
from orchestrator.core.errors import UserError
from orchestrator.core.tables import csv_text, markdown_table

SEED_KEYS = ("seed",)
METRIC = "best_val_miou"
SPLIT_KEY = "data.split"
INERT = "–"   # shown for a key that does not affect the run (e.g. ood.* of a method without an OOD stream)


EXTRA_METRICS = (TEACHER_PRECISION,)   # per-run numbers kept beside the score (the teacher-quality plot's x)
# Config keys added after runs were logged, with the value the older code used: a run without the key groups
# with the runs that set it to that value (e.g. the `methods` sweep's SemiOVS runs had no label noise).
ADDED_KEYS = {"teacher.label_noise": "0.0"}
BEST = Score("best")


@dataclass(frozen=True)
class Group:
    key: tuple                  # values of the grouping params, in `keys` order
    values: list[float]         # the score of each run in the group
    mask_ratio: list[float]
    per_class: dict[str, list[float]] = field(default_factory=dict)   # class -> last-epoch IoU per run
    seeds: list[str] = field(default_factory=list)                    # each run's seed, parallel to values
    extra: dict[str, list[float]] = field(default_factory=dict)       # EXTRA_METRICS per run

    @property
    def seed_values(self) -> list[float]:
        """One score per seed: the same config and seed logged by two merged sweeps is one sample, not two."""
        return list(paired.per_seed(self.seeds, self.values).values())

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seed_values) if self.values else math.nan

    @property
    def std(self) -> float:
        values = self.seed_values
        return statistics.stdev(values) if len(values) > 1 else 0.0


# Keys that do nothing in some runs, by their roles (orchestrator/core/config_roles.py): without an OOD stream
# (the ood.* and teacher.* keys), and when the teacher does not label the OOD stream (teacher.*, ood.teacher_thresh).
INERT_WITHOUT_OOD: frozenset[str] = frozenset(keys_with(roles.INERT_WITHOUT_OOD))
INERT_WITHOUT_TEACHER_LABELS: frozenset[str] = frozenset(keys_with(roles.INERT_WITHOUT_TEACHER_LABELS))


def effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params with inert keys blanked: INERT_WITHOUT_OOD without an OOD stream (supervised, unimatch), and
    INERT_WITHOUT_TEACHER_LABELS when the OOD stream is not labeled by the teacher; so a supervised run of one sweep
    and of another group together whatever their ood.label_source says."""
    params = {**ADDED_KEYS, **params}
    if params.get("train.method") in ("supervised", "unimatch"):
        inert = INERT_WITHOUT_OOD
    elif params.get("ood.label_source", "teacher") != "teacher":
        inert = INERT_WITHOUT_TEACHER_LABELS
    else:
        return dict(params)
    return {k: (INERT if k in inert else v) for k, v in params.items()}


def grouping_keys(trials: list[dict[str, Any]]) -> list[str]:
    """Params that differ between trials, except seeds (they are what the mean and std run over)."""
    params = [effective_params(t["params"]) for t in trials]
    keys = sorted({k for p in params for k in p})
    # a key counts when its *effective* values differ: ood.ratio fixed for SemiOVS and inert elsewhere is no
    # axis, nor is a key that runs of older code did not record (missing beside one value)
    return [k for k in keys if k not in SEED_KEYS and len({p.get(k) for p in params} - {INERT, None}) > 1]


def seed_of(params: dict[str, Any]) -> str:
    return "/".join(str(params.get(k)) for k in SEED_KEYS)


def group_rows(trials: list[dict[str, Any]], keys: list[str], score: Score = BEST) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for t in trials:
        value = score_of(t["metrics"], t.get("history"), score)
        if value is None:
            continue
        params = effective_params(t["params"])
        key = tuple(params.get(k) for k in keys)
        g = groups.setdefault(key, Group(key, [], []))
        g.values.append(value)
        g.seeds.append(seed_of(t["params"]))
        if "mask_ratio" in t["metrics"]:
            g.mask_ratio.append(t["metrics"]["mask_ratio"])
        for name, metric in t["metrics"].items():
            if name.startswith(score.class_prefix):
                g.per_class.setdefault(name[len(score.class_prefix):], []).append(metric)
            elif name in EXTRA_METRICS:
                g.extra.setdefault(name, []).append(metric)
    return sorted(groups.values(), key=lambda g: tuple(_sortable(v) for v in g.key))


def _sortable(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def paired_gains(groups: list[Group], keys: list[str], baseline: dict[str, str]) -> dict[tuple, paired.PairedGain]:
    """Each group's paired gain over its baseline group (same values on the other keys), seed by seed."""
    if not baseline:
        return {}
    paired.check_baseline(baseline, keys, [g.key for g in groups])
    by_key = {g.key: g for g in groups}
    out = {}
    for g in groups:
        if paired.is_baseline(g.key, keys, baseline):
            continue
        base = paired.match_baseline(g.key, keys, baseline, list(by_key), INERT)
        if base is None:
            continue
        diffs = paired.differences(paired.per_seed(g.seeds, g.values),
                                   paired.per_seed(by_key[base].seeds, by_key[base].values))
        if diffs:
            out[g.key] = paired.paired_gain(diffs)
    return out


@dataclass(frozen=True)
class Comparison:
    """What the tables compare: the score, and (optionally) the baseline and each group's paired gain."""
    score: Score = BEST
    baseline: dict[str, str] = field(default_factory=dict)
    gains: dict[tuple, paired.PairedGain] = field(default_factory=dict)

    @property
    def baseline_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.baseline.items())

    def gain_cell(self, g: Group, keys: list[str]) -> str:
        if paired.is_baseline(g.key, keys, self.baseline):
            return "baseline"
        gain = self.gains.get(g.key)
        return gain.cell() if gain else ""


NO_COMPARISON = Comparison()


def format_markdown(groups: list[Group], keys: list[str], cmp: Comparison = NO_COMPARISON) -> str:
    header = [*keys, "runs", f"{cmp.score.column} (mean ± std)"]
    rows = [[*g.key, len(g.values), f"{g.mean:.2f} ± {g.std:.2f}"] for g in groups]
    if cmp.baseline:
        header.append(f"paired gain vs {cmp.baseline_text} [95% CI] seeds gained")
        rows = [[*row, cmp.gain_cell(g, keys)] for row, g in zip(rows, groups)]
    return markdown_table(header, rows)


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {std:.1f}"


def format_by_split(groups: list[Group], keys: list[str], cell: Callable[[Group], str] | None = None) -> str:
    """The paper's layout: a row per combination of the other keys (methods), a column per label split."""
    if SPLIT_KEY not in keys or len(keys) < 2:
        return ""
    cell = cell or (lambda g: _cell(g.seed_values))
    si = keys.index(SPLIT_KEY)
    row_keys = [k for k in keys if k != SPLIT_KEY]
    splits = sorted({g.key[si] for g in groups}, key=_sortable)
    rows: dict[tuple, dict[Any, Group]] = {}
    for g in groups:
        rows.setdefault(tuple(v for i, v in enumerate(g.key) if i != si), {})[g.key[si]] = g
    ordered = sorted(rows.items(), key=lambda kv: tuple(_sortable(v) for v in kv[0]))
    return markdown_table([*row_keys, *(f"{s} labels" for s in splits)],
                           [[*row, *(cell(by_split[s]) if s in by_split else "" for s in splits)]
                            for row, by_split in ordered])


def format_per_class(groups: list[Group], keys: list[str]) -> str:
    """Per-class IoU (last epoch, mean ± std over seeds) per group: which classes a method helps or hurts."""
    classes = list(dict.fromkeys(c for g in groups for c in g.per_class))
    if not classes:
        return ""
    return markdown_table([*keys, *classes],
                           [[*g.key, *(_cell(g.per_class.get(c, [])) for c in classes)] for g in groups])


def format_csv(groups: list[Group], keys: list[str], cmp: Comparison = NO_COMPARISON) -> str:
    col = cmp.score.column
    header = [*keys, "runs", f"{col}_mean", f"{col}_std"]
    rows = [[*g.key, len(g.values), round(g.mean, 4), round(g.std, 4)] for g in groups]
    if cmp.baseline:
        header += ["baseline", "gain_mean", "gain_ci_low", "gain_ci_high", "gain_pairs", "gain_seeds_gained"]
        for row, g in zip(rows, groups):
            gain = cmp.gains.get(g.key)
            stats = [round(gain.mean, 4), _round(gain.low), _round(gain.high), gain.pairs, gain.gained] if gain \
                else [""] * 5
            row += [cmp.baseline_text if paired.is_baseline(g.key, keys, cmp.baseline) else "", *stats]
    return csv_text(header, rows)


def _round(value: float) -> float | str:
    return round(value, 4) if math.isfinite(value) else ""


def gain_metrics(groups: list[Group], keys: list[str], cmp: Comparison) -> dict[str, float]:
    """The paired gains as metrics of the parent run, named by score, baseline and group (so reports with
    another --score or --baseline do not overwrite them): `paired_gain/<score>/vs_<k>_<v>/<key>_<value>/.../<stat>`."""
    out = {}
    prefix = "/".join(["paired_gain", cmp.score.column,
                       "vs_" + "_".join(f"{k}_{_metric_safe(v)}" for k, v in cmp.baseline.items())])
    for g in groups:
        gain = cmp.gains.get(g.key)
        if gain is None:
            continue
        slug = "/".join(f"{k}_{_metric_safe(v)}" for k, v in zip(keys, g.key) if v != INERT)
        out.update({f"{prefix}/{slug}/{stat}": float(v) for stat, v in gain.as_dict().items() if math.isfinite(v)})
    return out


def _metric_safe(value: Any) -> str:
    return re.sub(r"[^\w.\-]", "_", str(value))


def collect_trials(uri: str, experiment: str, history: bool = False) -> tuple[str | None, list[dict[str, Any]]]:
    """(parent run id, trials) of a sweep; a trial with more than one run counts once (its newest run), and one
    `warning:` line names the others. With `history`, each trial also carries its per-epoch val_miou (for a
    last-k score)."""
    from orchestrator.core.console import warn

    experiment_id = mlflow_runs.experiment_id_of(uri, experiment)
    if experiment_id is None:
        raise UserError(f"no MLflow experiment '{experiment}' in {uri}. Fix: pass the sweep's --name as "
                        f"--experiment, and the --tracking-uri it logged to.")
    parents = mlflow_runs.find_runs(uri, experiment_id, role=mlflow_runs.ROLE_SWEEP)
    trials = mlflow_runs.trial_runs(uri, experiment_id)   # every page: a sweep of thousands is reported whole
    if not trials:
        raise UserError(f"experiment '{experiment}' has no trial runs yet. Fix: wait for a trial to report.")
    for sweep in sorted({t["sweep_name"] for t in trials if t["older"]}):
        warn(mlflow_runs.duplicate_runs_text(uri, sweep, {f"trial {t['trial_id']}": [t["run_id"], *t["older"]]
                                                          for t in trials if t["sweep_name"] == sweep},
                                             "the report reads the newest of each"))
    if history:
        for t in trials:
            t["history"] = mlflow_runs.metric_history(uri, t["run_id"], PER_EPOCH)
    return (parents[0].info.run_id if parents else None), trials


def provenance(uri: str, names: list[str], parents: list[str], title: str, command: str) -> Provenance:
    """What a pasted table was made from: each sweep's space file, overrides and fingerprint (its parent run's
    tags, written when the sweep started)."""
    import datetime

    if len(parents) < len(names):
        raise UserError(f"a sweep of {', '.join(names)} has no parent run. Fix: report --into only sweeps run by "
                        f"`run.py sweep`.")
    runs = []
    for name, parent in zip(names, parents):
        tags = mlflow_runs.client(uri).get_run(parent).data.tags
        if "defaults_fingerprint" not in tags:
            raise UserError(f"sweep '{name}' was run before sweeps recorded what they were made with, so its table "
                            f"cannot be pasted with a fingerprint. Fix: run the sweep again, then report --into.")
        runs.append({"experiment": name, "space": tags["space_file"], "sets": json.loads(tags.get("sets") or "{}"),
                     "fingerprint": tags["defaults_fingerprint"]})
    return Provenance(title, command, datetime.date.today().isoformat(), runs)


def report_markdown(title: str, groups: list[Group], keys: list[str], cmp: Comparison = NO_COMPARISON) -> str:
    parts = [f"# {title}\n", f"Score: {cmp.score.label}; mean ± std over seeds, one row per group of swept "
                             f"keys:\n", format_markdown(groups, keys, cmp)]
    if cmp.baseline:
        parts += [f"\nPaired gain: per seed, the group's score minus that of the baseline group "
                  f"({cmp.baseline_text}) run with the same seed (same labeled images, initialisation and data "
                  f"order); the mean over seeds, its 95% confidence interval (Student's t, n − 1 degrees of "
                  f"freedom), and how many of the paired seeds gained. Score: {cmp.score.short}.\n"]
    by_split = format_by_split(groups, keys)
    if by_split:
        parts += [f"\nThe same ({cmp.score.short} score), rows = the other keys, columns = label splits "
                  f"(the paper's layout):\n", by_split]
        if cmp.gains:
            parts += [f"\nPaired gain over {cmp.baseline_text} [95% CI] seeds gained, per label split:\n",
                      format_by_split(groups, keys, lambda g: cmp.gain_cell(g, keys))]
    per_class = format_per_class(groups, keys)
    if per_class:
        parts += [f"\n{cmp.score.per_class_label}, mean ± std over seeds:\n", per_class]
    return "\n".join(parts)


def block_name(names: list[str], baseline: list[str] | None, score: str) -> str:
    """The name of a pasted block: one per experiments, baseline and score, so that a document can hold the same
    sweeps compared with two baselines, and running the same report again replaces its own block."""
    name = "+".join(names) + "".join(f"@vs:{b}" for b in baseline or []) + ("" if score == "best" else f"@{score}")
    return "".join(name.split())


def write_report(uri: str, experiments: list[str] | str, out_dir: Path, baseline: list[str] | None = None,
                 score: str = "best", into: Path | None = None, command: str = "") -> dict[str, Any]:
    """Report on one sweep, or on several merged into one table (their trials grouped together). With `into`,
    the report's tables are also pasted into that Markdown file, with where they came from (tracking.paste)."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    chosen, wanted = parse_score(score), paired.parse_baseline(baseline)
    parents, trials = [], []
    for name in names:
        parent, found = collect_trials(uri, name, history=chosen.needs_history)
        parents += [parent] if parent else []
        trials += found
    keys = grouping_keys(trials)
    groups = group_rows(trials, keys, chosen)
    cmp = Comparison(chosen, wanted, paired_gains(groups, keys, wanted))
    title = " + ".join(names)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / "report.md", out_dir / "report.csv"]
        atomic.write_text(files[0], report_markdown(title, groups, keys, cmp))
        atomic.write_text(files[1], format_csv(groups, keys, cmp))
        files += plot_files(PlotContext(groups, keys, INERT, f"{chosen.short} val mIoU (%)", cmp.gains,
                                        cmp.baseline_text), out_dir)
    except OSError as err:
        if atomic.is_no_space(err):   # each file is whole or absent: the same command rewrites them all
            raise atomic.no_space_error(out_dir, "writing the report") from None
        raise
    if into is not None:
        paste(into, provenance(uri, names, parents, block_name(names, baseline, score), command),
              report_markdown(title, groups, keys, cmp).split("\n", 1)[1])   # the block has its own heading line
    metrics = gain_metrics(groups, keys, cmp)
    for parent in parents:
        mlflow_runs.log_files(uri, parent, files, "report")
        if metrics:
            mlflow_runs.log_metrics(uri, parent, metrics)
    return {"experiment": title, "trials": len(trials), "groups": len(groups), "keys": keys, "score": chosen.short,
            "paired_gains": len(cmp.gains), "files": [str(f) for f in files], "table": files[0].read_text()}
