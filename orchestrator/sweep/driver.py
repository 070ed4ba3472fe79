"""Run a sweep: validate → label what the trials need (once) → Ray Tune → MLflow → results table.

Everything that can be decided without Ray is decided first (search_space, sweep_plan), so a bad space
file fails in a second, before Ray starts.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.config import config_from_flat
from orchestrator.core.console import Console, emit, is_verbose
from orchestrator.core.errors import UserError
from orchestrator.core import storage as store
from orchestrator.core.names import check_name
from orchestrator.core.paths import default_cache_root, default_storage_root, files_root, resolve_root
from orchestrator.sweep.space import SearchSpace, load_space, make_search_alg, resolve_base, to_param_space
from orchestrator.labels.job import LabelRequest
from orchestrator.sweep import fingerprint, results
from orchestrator.students.encoder import EncoderRequest
from orchestrator.sweep.plan import (asha_max_t, driver_resources, encoder_configs, labeling_configs, per_trial_cpus,
                                     trial_packing)
from orchestrator.sweep.utilization import core_utilization
from orchestrator.tracking import client as mlflow_runs
from orchestrator.tracking.session import SweepTracking
from orchestrator.sweep.sync import write_summary

STATE_FILE = "sweep.json"
# The Tune function of every trial: orchestrator.trial.run_trial unless set. Only benchmarks/driver_scale.py sets
# it, to a stand-in with run_trial's signature that trains nothing, to measure this driver at thousands of trials.
TRIAL_FUNCTION = None


@dataclass
class SweepRequest:
    space: str
    name: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    cache: str | None = None
    resume: bool = False
    max_concurrent: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    ray_address: str | None = None   # join this cluster (else RAY_ADDRESS, else a private local Ray)


@dataclass
class SweepOutcome:
    name: str
    experiment_id: str
    parent_run_id: str
    rows: list[results.TrialRow]
    table: str
    seconds: float
    tracking_uri: str
    unlogged: str | None = None   # the line saying what MLflow lacks and how to sync it (None: nothing)
    best_model: tuple[str, str, float] | None = None   # (model id, trial id, score) named on the parent run
    metric: str = "val_miou"                            # the sweep's metric (what the score is)


def prepare_state(req: SweepRequest, space: SearchSpace, storage: str, name: str) -> tuple[dict[str, Any], bool]:
    """(the sweep's state, whether it is new): the state it started with on --resume, else a new one that
    `write_state` saves once the preflight has passed. Reads only: a refused sweep leaves nothing behind."""
    saved = store.read_text(store.join(storage, name, STATE_FILE))
    if req.resume:
        if saved is None:
            raise UserError(f"nothing to resume: no sweep '{name}' in {storage}. "
                            f"Fix: drop --resume to start it, or pass the --name/--storage it ran with.")
        state = json.loads(saved)
        if req.overrides:
            new = resolve_base(space, req.overrides)
            # a key the code added after the sweep started is not a change the user made
            changed = sorted(k for k in new if new[k] != state["base"].get(k, new[k]))
            if changed:
                raise UserError(f"--resume with --set changes {', '.join(changed)} of sweep '{name}'. "
                                f"Fix: resume without --set, or start a new sweep with --name.")
        return state, False
    if saved is not None:
        raise UserError(f"sweep '{name}' already exists in {storage}. "
                        f"Fix: pass --resume to continue it, or --name NEW_NAME to start another.")
    base = resolve_base(space, req.overrides)
    labeling_configs(space, base)  # refuse a bad space before anything is written
    return {"name": name, "space": space.source, "space_text": Path(space.source).read_text(),
            "base": base, "overrides": req.overrides, "created": time.time()}, True


def write_state(state: dict[str, Any], sweep_dir: str) -> None:
    store.write_text(store.join(sweep_dir, STATE_FILE), json.dumps(state, indent=1, default=str))


@dataclass(frozen=True)
class SweepRun:
    """What the Tuner of one sweep is built from (decided before Ray Tune starts)."""
    name: str
    space: SearchSpace
    base: dict[str, Any]
    storage: str             # Tune's storage root (a folder or a URI); the sweep's folder is storage / name
    cache: Path
    tracking: SweepTracking  # MLflow: parent run, background writer, reconcile
    inputs: "PreparedInputs"   # what the trials read: label stores, pretrained encoders
    resume: bool
    quiet: bool

    @property
    def sweep_dir(self) -> str:
        return store.join(self.storage, self.name)

    @property
    def files_root(self) -> Path:
        return files_root(self.storage, self.cache, self.name)


def run_sweep(req: SweepRequest) -> SweepOutcome:
    started = time.time()
    console = Console(req.quiet)
    space = load_space(req.space)
    name = space.name if req.name is None else check_name(req.name, "--name")
    if req.max_concurrent is not None:
        if req.max_concurrent < 1:
            raise UserError("--max-concurrent must be >= 1. Fix: pass a positive number.")
        space = SearchSpace(**{**space.__dict__, "max_concurrent_trials": req.max_concurrent})
    storage = store.resolve_storage(req.storage, default_storage_root())
    cache = resolve_root(req.cache, default_cache_root(), "--cache")
    uri = mlflow_runs.resolve_tracking_uri(req.tracking_uri)
    sweep_dir = store.join(storage, name)
    state, is_new = prepare_state(req, space, storage, name)
    base = state["base"]
    to_label = labeling_configs(space, base)   # validates label-relevant axes before Ray starts
    to_pretrain = encoder_configs(space, base)   # likewise the encoder's

    from orchestrator.preflight import check_shared_folders
    from orchestrator.runtime import init_ray

    ray_line = init_ray(quiet=req.quiet, address=req.ray_address)
    packing = _packing(space, base)
    console.say(f"sweep '{name}': {space.num_trials()} trial(s) from {space.source}, {packing.concurrent} at once: "
                f"{packing.reason}; storage {sweep_dir}")
    console.say(ray_line)
    check_shared_folders({"cache": cache, "storage": storage})
    if is_new:
        write_state(state, sweep_dir)
    inputs = prepare_inputs(base, to_label, to_pretrain, cache, console.say, console.progress)
    labeling = inputs.labeling

    tracking = SweepTracking(uri, name, storage, sweep_dir, base, files_root(storage, cache, name), space.selection,
                             space.log_models)
    tracking.start(resume=req.resume)
    parent = tracking.parent_run_id
    tracking.submit("the sweep inputs", lambda: _log_sweep_inputs(uri, parent, state, labeling))
    teacher_runs = sum(not summary["reused"] for summary in labeling)
    console.say(f"OOD labels: {len(labeling)} key(s) for {space.num_trials()} trial(s); the teacher ran for "
                f"{teacher_runs}, {len(labeling) - teacher_runs} reused from the cache; trials never run it")
    if req.resume:   # what MLflow missed before the interruption, from Tune's storage
        tracking.reconcile()

    run = SweepRun(name, space, base, storage, cache, tracking, inputs, req.resume, req.quiet)
    console.say(f"{STAGES[4]}: {space.num_trials()} trial(s), {packing.concurrent} at once")
    usage = _usage_window()
    grid = _fit_tuner(run, console, packing.concurrent)
    figures = usage.finish() if usage is not None else {}
    rows = results.rows_from_result_grid(grid, space.swept_keys, space.metric, space.mode,
                                         int(base["train.epochs"]))
    _log_core_use(run, figures, rows, console)
    seconds = time.time() - started
    line = tracking.finish(lambda: write_summary(uri, parent, rows, space, seconds), console.say)
    _refuse_full_disk(grid, sweep_dir, line)
    return SweepOutcome(name, tracking.experiment_id, parent, rows,
                        results.format_text(rows, space.swept_keys, space.metric), seconds, uri, line,
                        tracking.ledger.best_model, space.metric)


def _refuse_full_disk(grid, sweep_dir: str, unlogged: str | None) -> None:
    """Trials that failed because the storage filled up: one error line instead of a table of errors.
    Ray registers a checkpoint only once it is copied whole, so --resume continues from the last good one."""
    from orchestrator.core.atomic import is_no_space, no_space_error

    if any(is_no_space(err) for err in grid.errors):
        if unlogged:
            emit(unlogged, sys.stderr)
        raise no_space_error(sweep_dir, "the trials wrote their checkpoints and results",
                             "run the same command with --resume")


STAGES = ("stage 1/5 data", "stage 2/5 encoder", "stage 3/5 teacher", "stage 4/5 labels", "stage 5/5 trials")


@dataclass(frozen=True)
class PreparedInputs:
    """What the stages before the trials made, for the trials to read (they never make any of it)."""
    label_stores: dict[LabelRequest, str]      # each distinct label request → its label store
    encoders: dict[EncoderRequest, str]        # each distinct encoder request → its pretrained encoder file
    labeling: list[dict]                       # the labeling summaries (the parent run logs them)


def prepare_inputs(base: dict[str, Any], to_label: list[dict[str, Any]], to_pretrain: list[dict[str, Any]],
                   cache: Path, say, progress=None) -> PreparedInputs:
    """Generate the benchmark if needed, pretrain each distinct student encoder once, and label each distinct
    LabelRequest once, before any trial. Says which stage it is in before each; `progress` (a core.progress
    factory) shows the long ones."""
    from orchestrator.data.plan import dataset_root
    from orchestrator.labels.job import ensure_labels
    from orchestrator.students.encoder import ensure_pretrained_encoder
    from orchestrator.teachers.fit_task import ensure_fitted_teacher

    began = time.time()
    say(f"{STAGES[0]}: the dataset in {cache}")
    root = dataset_root(config_from_flat(base), cache, progress)
    say(f"{STAGES[0]}: ready in {time.time() - began:.0f} s ({root})")
    encoders = {}
    if not to_pretrain:   # the stage is still named, so the count of stages adds up
        say(f"{STAGES[1]}: none (students start from random weights; model.pretrain pretrains their encoder)")
    for flat in to_pretrain:
        cfg = config_from_flat(flat)
        began = time.time()
        say(f"{STAGES[1]}: the {cfg.model.arch} student's encoder ({cfg.model.pretrain})")
        path = ensure_pretrained_encoder(cfg, cache, dataset_root(cfg, cache), say, progress)
        say(f"{STAGES[1]}: ready in {time.time() - began:.0f} s")
        encoders[EncoderRequest.from_config(cfg)] = str(path)
    stores, summaries = {}, []
    for flat in to_label:
        cfg = config_from_flat(flat)
        began = time.time()
        say(f"{STAGES[2]}: {cfg.teacher.kind}")
        ensure_fitted_teacher(cfg, cache, dataset_root(cfg, cache), say, progress)
        say(f"{STAGES[2]}: ready in {time.time() - began:.0f} s")
        say(f"{STAGES[3]}: OOD pseudo-labels")
        outcome = ensure_labels(cfg, cache, say, progress)
        summary = outcome.summary()
        say(("reused" if outcome.reused else "labeled") + f" OOD pseudo-labels: {json.dumps(summary)}")
        stores[LabelRequest.from_config(cfg)] = outcome.path
        summaries.append(summary)
    return PreparedInputs(stores, encoders, summaries)


def _packing(space: SearchSpace, base: dict[str, Any]):
    import ray

    resources = ray.cluster_resources()
    return trial_packing(space, base, resources.get("CPU", 1), resources.get("GPU", 0), resources.get("memory"))


def _usage_window():
    """The trial phase's core accounting, on a private local Ray (whose processes all run under this one);
    None when joined to a cluster, whose other nodes /proc here cannot see."""
    import ray

    from orchestrator.runtime import joined_cluster
    from orchestrator.sweep.utilization import UsageWindow

    if joined_cluster() or not Path("/proc/stat").is_file():
        return None
    return UsageWindow(ray.cluster_resources().get("CPU", 1)).start()


def _log_sweep_inputs(uri: str, parent: str, state: dict[str, Any], labeling: list[dict]) -> None:
    from orchestrator.labels.diagnostics import metrics_for_mlflow

    mlflow_runs.log_text(uri, parent, state["space_text"], f"inputs/{Path(state['space']).name}")
    # what the sweep's numbers were made with: `report --into` writes it beside a pasted table
    mlflow_runs.set_tags(uri, parent, {fingerprint.TAG: fingerprint.fingerprint(state["base"]),
                                       "space_file": state["space"],
                                       "sets": json.dumps(state.get("overrides") or {}, sort_keys=True)})
    mlflow_runs.log_text(uri, parent, json.dumps(state["base"], indent=1, sort_keys=True), "inputs/base_config.json")
    for i, summary in enumerate(labeling):
        entry = Path(summary["path"])
        manifest = entry / "manifest.json"
        if manifest.is_file():
            mlflow_runs.log_text(uri, parent, manifest.read_text(), f"labeling/{summary['cache_key']}/manifest.json")
        diagnostics = entry / "diagnostics"   # plots + numbers kept with the cache entry (labels.diagnostics)
        metrics = {}
        if diagnostics.is_dir():
            mlflow_runs.log_folder(uri, parent, diagnostics, f"labeling/{summary['cache_key']}/diagnostics")
            numbers = json.loads((diagnostics / "diagnostics.json").read_text())
            metrics.update(metrics_for_mlflow(numbers, f"teacher.{i}." if len(labeling) > 1 else "teacher."))
        prefix = f"labeling.{i}." if len(labeling) > 1 else "labeling."
        metrics.update({prefix + key: float(summary[key]) for key in ("images", "labeled", "rejected", "seconds")})
        metrics[prefix + "reused"] = float(summary["reused"])
        mlflow_runs.log_metrics(uri, parent, metrics)
    teacher_runs = sum(not summary["reused"] for summary in labeling)
    mlflow_runs.log_metrics(uri, parent, {"labeling.keys": len(labeling), "labeling.teacher_runs": teacher_runs})


def _log_core_use(run: SweepRun, figures: dict[str, float], rows: list, console: Console) -> None:
    """The trial phase's core figures on the parent run and one line on the console. Beside the busy share
    (/proc): the share of the cores Ray had reserved for trials (trial seconds × CPUs per trial)."""
    if not figures:
        return
    reserved = sum(r.seconds for r in rows) * per_trial_cpus(run.base)
    figures["cost.core_reserved_share"] = round(core_utilization(reserved, figures["cost.cores"],
                                                                 figures["cost.trial_phase_seconds"]), 4)
    run.tracking.submit("the core figures", lambda: mlflow_runs.log_metrics(run.tracking.uri,
                                                                            run.tracking.parent_run_id, figures))
    console.say(f"cores over the trial phase: {figures['cost.core_utilization']:.0%} busy with this sweep's "
                f"processes, {figures['cost.core_reserved_share']:.0%} reserved for trials; the machine's, "
                f"every user's: {figures['cost.machine_core_utilization']:.0%} busy")


def _fit_tuner(run: SweepRun, console: Console, concurrent: int):
    from ray import tune

    from orchestrator.trial import keep_best_and_latest, run_trial

    selection = run.space.selection
    resources = {k: v for k, v in driver_resources(run.base).items() if v > 0}
    trainable = tune.with_resources(
        tune.with_parameters(TRIAL_FUNCTION or run_trial, base=run.base, cache_root=str(run.cache),
                             storage=run.sweep_dir, files_root=str(run.files_root),
                             label_stores=run.inputs.label_stores,
                             encoders=run.inputs.encoders, selection=selection),
        resources)
    if run.resume:
        if not tune.Tuner.can_restore(run.sweep_dir):
            console.say(f"no Tune state in {run.sweep_dir} yet: starting the trials from the beginning")
        else:
            console.say(f"resuming sweep '{run.name}' from {run.sweep_dir}")
            return tune.Tuner.restore(run.sweep_dir, trainable=trainable, resume_unfinished=True,
                                      resume_errored=True).fit()
    # Save Tune's experiment state often: a crash then loses at most a second of bookkeeping, so a finished
    # trial is not re-run on --resume (the default period adapts upwards from 10 s).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    callback = run.tracking.callback(progress=None if run.quiet else _progress_line(run.space))
    tuner = tune.Tuner(
        trainable,
        param_space=to_param_space(run.space),
        tune_config=_tune_config(run.space, run.base, concurrent),
        run_config=tune.RunConfig(name=run.name, storage_path=run.storage, callbacks=[callback],
                                  # a trial whose node dies (driver or workers) restarts from its last checkpoint
                                  failure_config=tune.FailureConfig(
                                      max_failures=config_from_flat(run.base).train.trial_retries),
                                  # a trial's best checkpoint by the sweep's metric, and its latest: the
                                  # epochs' checkpoints of local-mode trials, the best model of the others
                                  checkpoint_config=keep_best_and_latest(tune.CheckpointConfig, selection),
                                  verbose=_tune_verbosity()),
    )
    return tuner.fit()


def _tune_verbosity() -> int | None:
    """Tune's console output: none (its status tables and result boxes repeat what the per-epoch lines and the
    results table say), unless --verbose (then Tune's default).

    `verbose=0` alone is not silent in Ray 2.60: its default output engine prints the experiment's configuration
    box, "View detailed results here" and a TensorBoard hint whatever the verbosity
    (ray/tune/experimental/output.py, TuneTerminalReporter.experiment_started); its other engine, which Ray's
    RAY_AIR_NEW_OUTPUT=0 selects, prints nothing at 0. Its warning that the experiment state is saved often is
    off too: saving it every second is this driver's choice (TUNE_GLOBAL_CHECKPOINT_S above)."""
    if is_verbose():
        return None
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return 0


def _tune_config(space: SearchSpace, base: dict[str, Any], concurrent: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if space.scheduler.kind == "asha":
        # "epoch", not Tune's result count: a restarted trial reports its checkpoint's epoch again
        scheduler = ASHAScheduler(time_attr="epoch", max_t=asha_max_t(space, base),
                                  grace_period=space.scheduler.grace_period,
                                  reduction_factor=space.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(metric=space.metric, mode=space.mode, scheduler=scheduler, num_samples=space.num_samples,
                           search_alg=make_search_alg(space, concurrent))


def _progress_line(space: SearchSpace):
    """A one-line live progress message per trial epoch (stdout of the sweep driver)."""
    def show(trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        swept = " ".join(f"{k}={config.get(k)}" for k in space.swept_keys)
        miou, best = result.get("val_miou"), result.get("best_val_miou")
        scores = f"val_miou {miou:.2f} (best {best:.2f})" if isinstance(miou, float) and isinstance(best, float) \
            else "no val_miou in this report"   # not the whole report: its dozens of metrics are in MLflow
        emit(f"[{trial_id}] {swept} epoch {result.get('epoch')}: {scores}")
    return show
