"""One function per CLI command: turn parsed arguments into a request, run it, print the outcome."""
from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any
import subprocess
import sys
from pathlib import Path

from orchestrator.cli.parser import parse_sets
from orchestrator.core.config import build_config
from orchestrator.core.console import Console, emit
from orchestrator.core.errors import UserError
from orchestrator.core.names import check_name
from orchestrator.core.paths import default_cache_root, resolve_root


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _cache(args) -> Path:
    return resolve_root(getattr(args, "cache", None), default_cache_root())


def sweep(args: argparse.Namespace) -> int:
    from orchestrator.sweep.driver import SweepRequest, run_sweep

    outcome = run_sweep(SweepRequest(space=args.space, name=args.name, tracking_uri=args.tracking_uri,
                                     storage=args.storage, cache=args.cache, resume=args.resume,
                                     max_concurrent=args.max_concurrent, overrides=parse_sets(args.sets),
                                     quiet=args.quiet, ray_address=args.ray_address))
    for line in sweep_summary(outcome):
        emit(line)
    if outcome.unlogged:
        emit(outcome.unlogged, sys.stderr)
    return 1 if any(r.status == "error" for r in outcome.rows) else 0


def sweep_summary(outcome) -> list[str]:
    """The end of a sweep: the table, where its runs are in MLflow and how to open them, the best model."""
    from orchestrator.tracking.client import resolve_tracking_uri, run_link, ui_link

    uri = "" if outcome.tracking_uri == resolve_tracking_uri(None) else \
        f" --tracking-uri {shlex.quote(outcome.tracking_uri)}"
    lines = ["", f"sweep '{outcome.name}' finished in {outcome.seconds:.0f} s", "", outcome.table, "",
             f"MLflow: experiment '{outcome.name}' (id {outcome.experiment_id}) in {outcome.tracking_uri}",
             f"open it: python run.py ui --tracking-uri {shlex.quote(outcome.tracking_uri)}  →  "
             f"{ui_link('http://127.0.0.1:5000', outcome.experiment_id)}",
             f"the results table, on the sweep's run: "
             f"{run_link('http://127.0.0.1:5000', outcome.experiment_id, outcome.parent_run_id)}"]
    if outcome.best_model:
        model_id, trial_id, score = outcome.best_model
        lines += [f"best model: models:/{model_id} (trial {trial_id}, {outcome.metric} {score:.2f}); run it on "
                  f"your images:", f"  python run.py predict --model models:/{model_id} --images DIR --out DIR{uri}"]
    return lines


def train(args: argparse.Namespace) -> int:
    from orchestrator.single_run import TrainRequest, run_single

    print_json(run_single(TrainRequest(overrides=parse_sets(args.sets), experiment=args.experiment,
                                       tracking_uri=args.tracking_uri, storage=args.storage, cache=args.cache,
                                       quiet=args.quiet, ray_address=args.ray_address)))
    return 0


def _start_ray(args: argparse.Namespace, console: Console) -> None:
    """Start or join Ray, say which, and check that every node sees the cache."""
    from orchestrator.preflight import check_shared_folders
    from orchestrator.runtime import init_ray

    console.say(init_ray(quiet=args.quiet, address=args.ray_address))
    check_shared_folders({"cache": _cache(args)})


def label(args: argparse.Namespace) -> int:
    from orchestrator.labels.job import ensure_labels

    cfg = build_config(parse_sets(args.sets), "--set")
    if cfg.ood.label_source != "teacher":
        raise UserError("ood.label_source is not 'teacher': there is nothing to label. "
                        "Fix: drop that --set, or set ood.label_source=teacher.")
    console = Console(args.quiet, sys.stderr)   # progress on stderr: stdout holds only the JSON summary
    _start_ray(args, console)
    print_json(ensure_labels(cfg, _cache(args), console.say, console.progress).summary())
    return 0


def data_synth(args: argparse.Namespace) -> int:
    from orchestrator.data.shapes import ensure_shapes, generate_shapes
    from orchestrator.data.plan import shapes_spec

    overrides = {**parse_sets(args.sets), "data.seed": args.seed}
    spec = shapes_spec(build_config(overrides, "--set"))
    try:
        if args.out:
            manifest = generate_shapes(spec, args.out, overwrite=args.overwrite)
            root = Path(args.out).resolve()
        else:
            root = ensure_shapes(_cache(args), spec)
            manifest = json.loads((root / "manifest.json").read_text())
    except ValueError as err:
        raise UserError(str(err)) from None
    print_json({"root": str(root), "digest": manifest.get("digest"), "counts": manifest.get("counts")})
    return 0


def data_check(args: argparse.Namespace) -> int:
    from orchestrator.data.check import check_dataset

    problems = check_dataset(args.root, split=args.split)
    for p in problems:
        print(f"{p.path}: {p.kind}: {p.detail}")
    if problems:
        print(f"error: {len(problems)} problem(s) in {args.root}, listed above. Fix: repair or remove those "
              f"files (a run skips, counts and lists the unreadable ones).", file=sys.stderr)
        return 2
    print(f"no problems found in {args.root}")
    return 0


def teacher_fit(args: argparse.Namespace) -> int:
    from orchestrator.data.plan import dataset_root
    from orchestrator.runtime import choose_target
    from orchestrator.teachers.fit_task import ensure_fitted_teacher, fitted_textseg_path
    from orchestrator.teachers.registry import teacher_traits

    cfg = build_config(parse_sets(args.sets), "--set")
    if not teacher_traits(cfg.teacher.kind).fits_on_source:   # the kind's trait (docs/extending.md)
        raise UserError(f"teacher.kind={cfg.teacher.kind} is not fitted on the source corpus (its class does not "
                        f"declare fits_on_source). Fix: --set teacher.kind=textseg, or a plug-in that fits_on_source.")
    if choose_target(args.ray_address, os.environ).joins_cluster:   # the fit then runs as a task on a node
        _start_ray(args, Console(args.quiet))
    progress = Console(args.quiet, sys.stderr).progress   # stdout holds only the JSON summary
    root = dataset_root(cfg, _cache(args), progress)
    path = fitted_textseg_path(cfg, _cache(args), root)
    existed = path.is_file()
    ensure_fitted_teacher(cfg, _cache(args), root, emit, progress)
    print_json({"checkpoint": str(path), "reused": existed})
    return 0


def teacher_eval(args: argparse.Namespace) -> int:
    from orchestrator.teachers.eval_task import evaluate_on_ood

    cfg = build_config(parse_sets(args.sets), "--set")
    print_json(evaluate_on_ood(cfg, _cache(args), args.num_images))
    return 0


def report(args: argparse.Namespace) -> int:
    from orchestrator.tracking.report import write_report
    from orchestrator.tracking.client import resolve_tracking_uri

    for name in args.experiment:   # they name the default output folder too
        check_name(name, "--experiment")
    out = Path(args.out) if args.out else Path("reports") / "+".join(args.experiment)
    command = report_command(args)
    summary = write_report(resolve_tracking_uri(args.tracking_uri), args.experiment, out,
                           baseline=args.baseline, score=args.score,
                           into=Path(args.into) if args.into else None, command=command)
    print(summary.pop("table"))
    print_json(summary)
    return 0


def predict(args: argparse.Namespace) -> int:
    from orchestrator.models.predict import PredictRequest, run_predict
    from orchestrator.tracking.client import resolve_tracking_uri

    summary = run_predict(PredictRequest(
        model=args.model, images=args.images, out=args.out, overlays=args.overlays, confidence=args.confidence,
        data=args.data, actors=args.actors, gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size,
        overwrite=args.overwrite, tracking_uri=resolve_tracking_uri(args.tracking_uri), quiet=args.quiet,
        ray_address=args.ray_address))
    print_json(summary)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from orchestrator.models.evaluate import EvaluateRequest, run_evaluate
    from orchestrator.tracking.client import resolve_tracking_uri

    outcome = run_evaluate(EvaluateRequest(model=args.model, data=args.data, split=args.split,
                                           experiment=args.experiment, tracking_uri=resolve_tracking_uri(args.tracking_uri),
                                           cache=_cache(args)))
    print(outcome.pop("table"))
    print_json(outcome)
    return 0


def report_command(args: argparse.Namespace) -> str:
    """The report command as a user would type it again (what a pasted table says it was made by)."""
    parts = ["python", "run.py", "report"]
    for e in args.experiment:
        parts += ["--experiment", e]
    for b in args.baseline or ():
        parts += ["--baseline", b]
    parts += ["--score", args.score] if args.score != "best" else []
    parts += ["--into", args.into] if args.into else []
    return " ".join(shlex.quote(p) for p in parts)


def sync(args: argparse.Namespace) -> int:
    from orchestrator.sweep.sync import sync_sweep

    outcome = sync_sweep(args.name, args.storage, args.tracking_uri, Console(args.quiet).say, args.cache)
    print(f"sweep '{args.name}': {outcome.trials} trial(s), {outcome.epochs} epoch(s) in Tune's storage; "
          f"wrote {outcome.written} epoch(s) MLflow lacked (experiment id {outcome.experiment_id})")
    return 0


def ui(args: argparse.Namespace) -> int:
    from orchestrator.tracking.client import resolve_tracking_uri, server_env

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("http"):
        print(f"{uri} is already a server: open it in a browser.")
        return 0
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    from orchestrator.tracking.client import artifact_root_for

    root = artifact_root_for(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    print(f"MLflow UI on http://{args.host}:{args.port}/#/experiments?workflowType=machine_learning "
          f"(Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd, env=server_env())
    except KeyboardInterrupt:
        return 0
