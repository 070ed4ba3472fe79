"""The command line's grammar: every command, flag and help text (`python run.py COMMAND --help`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from orchestrator.cli.version import package_version
from orchestrator.core.config import allowed_values_help
from orchestrator.core.errors import UserError


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs; values are read as YAML scalars (0.5 → float, true → bool, 16 → int)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set '{item}': expected key=value. Fix: write e.g. --set ood.ratio=0.5.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):
            raise UserError(f"--set '{item}': the value must be a single number, word or true/false.")
        out[key.strip()] = value
    return out


def _common(p: argparse.ArgumentParser, *, tracking: bool = True, storage: bool = True, ray: bool = True) -> None:
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set train.epochs=2; "
                        + allowed_values_help())
    p.add_argument("--cache", help="cache folder for data, teachers and labels (default .semiovs/cache)")
    if storage:
        p.add_argument("--storage", help="Ray Tune/Train storage: a folder every node sees, or a pyarrow URI such as "
                       "s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL or ?endpoint_override=HOST:PORT; "
                       "default .semiovs/ray_results)")
    if tracking:
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                                              "sqlite:///mlflow.db in this folder)")
    if ray:
        p.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, which `ray job submit` "
                                             "sets; without either, a private local Ray starts)")


def _output_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """--quiet and --verbose, before the command (`top`) or after it. After it they default to SUPPRESS, so a
    command's parser does not overwrite what was given before the command."""
    default = False if top else argparse.SUPPRESS
    p.add_argument("--quiet", action="store_true", default=default,
                   help="less output: no stage or progress lines (warnings and errors still show)")
    p.add_argument("--verbose", action="store_true", default=default,
                   help="Ray's own output too: its INFO lines, Tune's status tables, Ray Train's and Ray Data's logs")


def _every_command(parser: argparse.ArgumentParser):
    """Each command's parser, nested ones (data synth, teacher fit, ...) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _every_command(child)


def default_prog() -> str:
    """How the user called us, for usage lines: `run.py`, `semiovs`, or `python -m orchestrator`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "semiovs"
    return "python -m orchestrator" if name == "__main__.py" else name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _build_commands(argparse.ArgumentParser(prog=prog or default_prog(),
                                                     description="SemiOVS experiment orchestrator on Ray."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _output_flags(parser, top=True)
    for command in _every_command(parser):
        _output_flags(command, top=False)
    return parser


def _build_commands(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sweep", help="run a Ray Tune sweep from a search-space file")
    p.add_argument("--space", required=True, help="search-space YAML, e.g. search_spaces/smoke.yaml")
    p.add_argument("--name", help="sweep name = MLflow experiment (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: what the CPUs hold)")
    _common(p)

    p = sub.add_parser("train", help="one training run without Tune")
    p.add_argument("--experiment", default="train", help="MLflow experiment name (default: train)")
    _common(p)

    p = sub.add_parser("label", help="pseudo-label the OOD corpus with the teacher (cached)")
    _common(p, tracking=False, storage=False)

    data = sub.add_parser("data", help="datasets: generate the benchmark, check a dataset")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("synth", help="generate the `shapes` benchmark")
    p.add_argument("--out", help="output folder (default: the cache, where sweeps look for it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    _common(p, tracking=False, storage=False, ray=False)
    p = dsub.add_parser("check", help="report every problem in a dataset (exit 2 if any)")
    p.add_argument("root", help="dataset root (holding JPEGImages/, SegmentationClass/, splits/)")
    p.add_argument("--split", help="only this split's files")

    teacher = sub.add_parser("teacher", help="the open-vocabulary teacher")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True, metavar="ACTION")
    p = tsub.add_parser("fit", help="fit the benchmark's textseg teacher on the source corpus")
    _common(p, tracking=False, storage=False)
    p = tsub.add_parser("eval", help="teacher mIoU against ground truth on OOD images")
    p.add_argument("--num-images", type=int, default=500, help="how many OOD images to score")
    _common(p, tracking=False, storage=False, ray=False)

    p = sub.add_parser("report", help="table (mean ± std over seeds) and plots of a sweep's runs")
    p.add_argument("--experiment", required=True, action="append",
                   help="the sweep's name (its MLflow experiment); repeat it to merge sweeps into one table")
    p.add_argument("--tracking-uri", help="MLflow store (default sqlite:///mlflow.db in this folder)")
    p.add_argument("--out", help="output folder (default reports/<experiment>[+<experiment>...])")
    p.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                   help="compare every group with the group that has this value, seed by seed: paired gain, "
                        "its 95%% CI and the seeds that gained, e.g. --baseline train.method=unimatch "
                        "(repeatable: all must hold)")
    p.add_argument("--score", default="best", metavar="best|final|lastK|test",
                   help="the number compared: best (best epoch, the default; optimistic), final (last epoch), "
                        "lastK (mean of the last K epochs, e.g. last3) or test (the best-on-val model's score "
                        "on the held-out test split); the tables say which")
    p.add_argument("--into", metavar="FILE", help="also paste the tables into this Markdown file (its block of the "
                                                  "same name, replaced), with the command, date and what the runs "
                                                  "were made with")

    p = sub.add_parser("predict", help="run a trained student on images (Ray Data, an actor pool): mask PNGs")
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/<model_id>, runs:/<run_id>/best_student, or a checkpoint folder or model.pt file")
    p.add_argument("--images", required=True, metavar="DIR|LIST",
                   help="a folder of images (searched recursively) or a list file (one path a line)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (written whole, then renamed into place)")
    p.add_argument("--overlays", action="store_true", help="also write image | mask overlays (overlays/)")
    p.add_argument("--confidence", action="store_true", help="also write confidence maps (confidence/, 255 = 1.0)")
    p.add_argument("--data", metavar="ROOT", help="refuse a model whose classes differ from this dataset's")
    p.add_argument("--actors", type=int, default=1, help="inference actors (default 1; one per GPU on a cluster)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (default 0: CPU)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--tracking-uri", help="MLflow store the model is in (default $MLFLOW_TRACKING_URI or "
                                          "sqlite:///mlflow.db in this folder)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS; else a private local Ray)")

    p = sub.add_parser("evaluate", help="score a trained student on a dataset split; logs an MLflow evaluation run")
    p.add_argument("--model", required=True, metavar="URI",
                   help="models:/<model_id>, runs:/<run_id>/best_student, or a checkpoint folder or model.pt file")
    p.add_argument("--data", metavar="ROOT", help="dataset root in the VOC layout (default: the dataset the model "
                                                  "was trained on; the embedded benchmark is generated if missing)")
    p.add_argument("--split", default="val", help="val or test (a split file <splits>/<split>.txt; default val)")
    p.add_argument("--experiment", help="MLflow experiment of the evaluation run (default: the model's own, else "
                                        "'evaluations')")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--cache", help="cache folder holding the embedded benchmark (default .semiovs/cache)")

    p = sub.add_parser("sync", help="write what a sweep's Tune storage holds and MLflow lacks (after an outage)")
    p.add_argument("--name", required=True, help="the sweep's name (its folder in the storage)")
    p.add_argument("--storage", help="Ray Tune storage folder or URI the sweep ran with (default .semiovs/ray_results)")
    p.add_argument("--cache", help="the sweep's cache folder (its pictures are there when --storage is a bucket)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")

    p = sub.add_parser("ui", help="start the MLflow UI on the results (bound to 127.0.0.1)")
    p.add_argument("--tracking-uri", help="MLflow store (default sqlite:///mlflow.db in this folder)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    return parser
