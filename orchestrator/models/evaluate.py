"""`run.py evaluate`: score a trained student on a dataset split, as an MLflow evaluation run.

The score comes from the function the training loop scores every epoch with (trainables.evaluation), so a
trial's model on its own val split gives back the val mIoU its run logged for that epoch. The run takes the
model as its input (MLflow 3's model-input link) and links its `<split>_miou` to the model, so the Models tab
shows the test score beside the val score. By default the data is the dataset the model was trained on
(read from the config in the model; the embedded benchmark is generated if it is missing).
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.config import config_from_flat
from orchestrator.core.errors import UserError
from orchestrator.core.tables import markdown_table
from orchestrator.models.resolve import ResolvedModel, resolve_model
from orchestrator.tracking import client as mlflow_runs

DEFAULT_EXPERIMENT = "evaluations"
ROLE_EVALUATION = "evaluation"


@dataclass(frozen=True)
class EvaluateRequest:
    model: str
    tracking_uri: str
    cache: Path
    data: str | None = None
    split: str = "val"
    experiment: str | None = None


def split_pairs(root: Path, splits_dir: Path, split: str) -> list[tuple[str, str | None]]:
    """The (image, mask) paths of `<splits_dir>/<split>.txt`, absolute; a split that is not there is an error
    listing the ones that are."""
    from orchestrator.core.paths import inside
    from orchestrator.data.voc import read_split_file

    listing = inside(splits_dir, f"{split}.txt")
    if not listing.is_file():
        known = sorted(p.stem for p in splits_dir.glob("*.txt")) if splits_dir.is_dir() else []
        raise UserError(f"--split {split}: {listing} does not exist; this dataset's split files: "
                        f"{', '.join(known) or 'none'}. Fix: pass one of them (val, or test where the dataset has one).")
    pairs = [(str(root / img), str(root / mask) if mask else None) for img, mask in read_split_file(listing)]
    if not pairs or any(mask is None for _, mask in pairs):
        raise UserError(f"--split {split}: {listing} must list `<image> <mask>` pairs. Fix: give a labeled split.")
    return pairs


def dataset_for(resolved: ResolvedModel, data: str | None, cache: Path) -> tuple[Path, Path]:
    """(dataset root, splits folder): --data, else the dataset the model was trained on."""
    from orchestrator.data.plan import dataset_root

    if data:
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"--data {data}: no such folder. Fix: pass a dataset root in the VOC layout.")
        return root, root / "splits"
    cfg = config_from_flat(resolved.package["config"], f"the config inside model '{resolved.uri}'")
    root = dataset_root(cfg, cache)
    return root, (Path(cfg.data.splits_dir).expanduser().resolve() if cfg.data.splits_dir else root / "splits")


def check_vocabulary(resolved: ResolvedModel, root: Path) -> None:
    from orchestrator.data.voc import load_vocabulary

    names = list(load_vocabulary(root).names)
    if names != resolved.class_names:
        raise UserError(f"model '{resolved.uri}' predicts the classes {resolved.class_names}, but the dataset "
                        f"{root} labels {names}. Fix: evaluate it on a dataset of its own vocabulary (--data).")


def run_evaluate(req: EvaluateRequest) -> dict[str, Any]:
    started = time.time()
    resolved = resolve_model(req.model, req.tracking_uri)
    root, splits_dir = dataset_for(resolved, req.data, req.cache)
    check_vocabulary(resolved, root)
    pairs = split_pairs(root, splits_dir, req.split)
    ev, broken = score(resolved, pairs)
    if not math.isfinite(ev.miou):
        raise UserError(f"no image of {splits_dir / (req.split + '.txt')} could be read ({len(broken)} broken). "
                        f"Fix: check the split with `python run.py data check {root}`.")
    names = resolved.class_names
    metrics = {f"{req.split}_miou": ev.miou,
               **{f"{req.split}_iou.{n}": v for n, v in zip(names, ev.ious) if math.isfinite(v)}}
    run_id, experiment_id = log_evaluation(req, resolved, root, metrics, ev.confusion, broken)
    table = markdown_table(["class", f"{req.split} IoU (%)"],
                           [[n, "n/a" if not math.isfinite(v) else f"{v:.2f}"] for n, v in zip(names, ev.ious)]
                           + [["mean (mIoU)", f"{ev.miou:.2f}"]])
    return {"model": req.model, "model_id": resolved.model_id, "data": str(root), "split": req.split,
            "images": len(pairs) - len(broken), "broken": len(broken), "miou": round(ev.miou, 4),
            "per_class_iou": {n: round(v, 4) for n, v in zip(names, ev.ious) if math.isfinite(v)},
            "run_id": run_id, "experiment_id": experiment_id, "seconds": round(time.time() - started, 1),
            "table": table}


def score(resolved: ResolvedModel, pairs: list[tuple[str, str | None]]):
    """The model on the pairs, in this process (a GPU when there is one); (Evaluation, broken paths)."""
    import torch

    from trainables.distributed import WorkerContext
    from trainables.evaluation import evaluate
    from trainables.streams import BrokenSamples
    from trainables.student_file import build_from_package

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_from_package(resolved.package, device)
    broken = BrokenSamples()
    ev = evaluate(model, pairs, len(resolved.class_names), WorkerContext("local", 0, 1, device), broken=broken)
    return ev, sorted(broken.paths)


def log_evaluation(req: EvaluateRequest, resolved: ResolvedModel, root: Path, metrics: dict[str, float],
                   confusion: list[list[int]], broken: list[str]) -> tuple[str, str]:
    """The evaluation run: the model as its input, the scores (linked to the model too), the confusion matrix."""
    from mlflow.entities import LoggedModelInput, Metric

    from trainables.pictures import confusion_matrix_png

    c = mlflow_runs.client(req.tracking_uri)
    model = c.get_logged_model(resolved.model_id) if resolved.model_id else None
    if req.experiment:
        experiment_id = mlflow_runs.ensure_experiment(req.tracking_uri, req.experiment)
    elif model is not None:
        experiment_id = model.experiment_id      # beside the sweep that made the model
    else:
        experiment_id = mlflow_runs.ensure_experiment(req.tracking_uri, DEFAULT_EXPERIMENT)
    run_id = mlflow_runs.create_run(req.tracking_uri, experiment_id, f"evaluate {req.split}: {req.model}",
                                    {"role": ROLE_EVALUATION, "model_uri": req.model,
                                     **({"model_id": resolved.model_id} if resolved.model_id else {})})
    try:
        mlflow_runs.log_params(req.tracking_uri, run_id, {"model_uri": req.model, "data_root": str(root),
                                                          "split": req.split, "model_epoch": resolved.package["epoch"]})
        if model is not None:
            c.log_inputs(run_id, models=[LoggedModelInput(model.model_id)])
        now = int(time.time() * 1000)
        c.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=resolved.model_id) for k, v in metrics.items()])
        mlflow_runs.log_metrics(req.tracking_uri, run_id, {"broken_samples": float(len(broken))})
        with tempfile.TemporaryDirectory(prefix="semiovs-eval-") as tmp:
            files = [Path(tmp) / "confusion_matrix.png", Path(tmp) / "confusion_matrix.json"]
            files[0].write_bytes(confusion_matrix_png(confusion, resolved.class_names, f"{req.split}: {req.model}"))
            files[1].write_text(json.dumps({"classes": resolved.class_names, "rows_truth_cols_prediction": confusion}))
            if broken:
                files.append(Path(tmp) / "broken_samples.txt")
                files[-1].write_text("\n".join(broken) + "\n")
            mlflow_runs.log_files(req.tracking_uri, run_id, files, None)
    except BaseException:
        mlflow_runs.finish_run(req.tracking_uri, run_id, failed=True)
        raise
    mlflow_runs.finish_run(req.tracking_uri, run_id)
    return run_id, experiment_id
