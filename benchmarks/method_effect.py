"""Does the SemiOVS effect show on the embedded `shapes` benchmark? Methods × splits × seeds, plain PyTorch (no Ray).

For each labeled split and seed it trains the CPU student with the project's own step (`trainables.recipe.run_step`
via `trainables.train_loop.train_one_epoch`, the same stream sampler, augmentation, poly-lr SGD and evaluation the
sweeps use) under five methods:

  supervised        labeled images only
  unimatch          + ID unlabeled images (UniMatch)
  semiovs-teacher   + OOD images labeled by the open-vocabulary teacher (the paper's method)
  semiovs-self      + OOD images labeled by the student itself, thresholded at tau (the naive baseline)
  semiovs-gt        + OOD images with their ground-truth target labels (the ceiling for any teacher)

and prints per-run JSON lines, then a table of mean ± std ID val mIoU, plus the teacher's OOD mIoU and the
supervised student's OOD mIoU (a teacher only helps when it labels OOD images better than the student would).

    python benchmarks/method_effect.py                       # 16 labels, 2 seeds, all five methods
    python benchmarks/method_effect.py --splits 8 16 32 --seeds 0 1 2
    python benchmarks/method_effect.py --set train.lr=0.05 --set train.conf_thresh=0.9 --jobs 2

The teacher is the benchmark's cached textseg teacher (fitted once on the source corpus if missing, like a sweep
does; the fit alone takes minutes). Its labels go through the label cache's PNG encoding and the trial-side
threshold (`ood.teacher_thresh`) exactly as in a sweep. Config values come from `orchestrator.core.config` defaults,
then `--set key=value`. Measured here (generator v3,
16 labels, one seed, five methods, --jobs 2, teacher already fitted): 183 s; with --set train.epochs=12 and
three methods: 196 s.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = {
    "supervised": {"train.method": "supervised"},
    "unimatch": {"train.method": "unimatch"},
    "semiovs-teacher": {"train.method": "semiovs", "ood.label_source": "teacher"},
    "semiovs-self": {"train.method": "semiovs", "ood.label_source": "self"},
    "semiovs-gt": {"train.method": "semiovs", "ood.label_source": "teacher"},  # teacher slot fed ground truth
}


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {item!r}: expected key=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def label_table(labels: np.ndarray, conf_u8: np.ndarray, ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
    """The label cache's in-memory form (image_id → label PNG, confidence PNG), as trials read it."""
    from orchestrator.core.masks import encode_png

    return {i: (encode_png(lab), encode_png(c)) for i, lab, c in zip(ids, labels, conf_u8)}


@dataclass(frozen=True)
class OODCorpus:
    """The OOD images and their target-vocabulary ground truth; the first `scored` score teacher and student."""

    images: np.ndarray
    gt: np.ndarray
    scored: int
    distractor: np.ndarray | None   # distractor pixels of the scored images (None without source masks)


def run_teacher(cfg, cache_root: Path, root: Path, plan, ood: OODCorpus,
                log) -> tuple[dict[str, Any], dict[str, tuple[bytes, bytes]]]:
    """Fit (or reuse) the benchmark's teacher, label every OOD image, and score it on the first `ood.scored`."""
    import torch

    from orchestrator.teachers.fit_task import ensure_fitted_teacher, teacher_spec
    from orchestrator.teachers import build_teacher, evaluate_teacher

    images, gt, n = ood.images, ood.gt, ood.scored
    started = time.time()
    ckpt = ensure_fitted_teacher(cfg, cache_root, root, log)
    fit_seconds = time.time() - started
    teacher = build_teacher(teacher_spec(cfg, cache_root, root), plan.teacher_vocabulary)
    started = time.time()
    with torch.inference_mode():
        preds = [teacher.predict(images[s:s + 128]) for s in range(0, len(images), 128)]
    labels = np.concatenate([p[0] for p in preds])
    conf_u8 = np.round(255 * np.concatenate([p[1] for p in preds])).astype(np.uint8)
    label_seconds = time.time() - started
    scores = evaluate_teacher(teacher, images[:n], gt[:n], plan.vocabulary.num_classes)
    info = {
        "checkpoint": str(ckpt), "fit_steps": cfg.teacher.fit_steps, "fit_seconds_if_fitted_now": round(fit_seconds, 1),
        "label_seconds": round(label_seconds, 1), "ood_images": len(images), "scored_images": n,
        "ood_miou": round(scores["miou"], 2), "ood_pixel_acc": round(scores["pixel_acc"], 2),
        "per_class_iou": dict(zip(plan.vocabulary.names, [round(v, 1) for v in scores["per_class_iou"]])),
        "label_agreement_with_gt": round(100.0 * float((labels == gt)[gt != 255].mean()), 2),
    }
    if ood.distractor is not None:
        info["distractor_pixels_to_background"] = round(float((labels[:n][ood.distractor] == 0).mean()), 3)
    return info, label_table(labels, conf_u8, [i for i, _ in plan.ood])


def prepare(base: dict[str, Any], cache_root: Path, score_images: int, log, need_teacher: bool = True) -> dict[str, Any]:
    """Data plan, teacher labels and ground-truth labels of the OOD corpus, and the teacher's quality on it.
    Without `need_teacher` (no method reads teacher labels) the teacher is neither fitted nor run."""
    from orchestrator.core.config import build_config
    from orchestrator.core.images import load_image, load_mask
    from orchestrator.data.plan import build_plan, dataset_root

    cfg = build_config({**base, "train.method": "semiovs"})
    root = dataset_root(cfg, cache_root)
    plan = build_plan(cfg, cache_root)
    ids = [i for i, _ in plan.ood]
    images = np.stack([load_image(p) for _, p in plan.ood])
    gt = np.stack([load_mask(m) for m in plan.ood_masks])
    n = min(score_images, len(images))
    source = [m.replace("/SegmentationClass/", "/SegmentationClassSource/") for m in plan.ood_masks[:n]]
    distractor = None
    if all(os.path.isfile(s) for s in source):
        src = np.stack([load_mask(s) for s in source])
        distractor = (src >= plan.vocabulary.num_classes) & (src != 255)
    teacher_info, teacher_table = {"scored_images": n}, None
    if need_teacher:
        ood = OODCorpus(images, gt, n, distractor)
        teacher_info, teacher_table = run_teacher(cfg, cache_root, root, plan, ood, log)
    return {
        "root": str(root), "ids": ids,
        "teacher_table": teacher_table,
        "gt_table": label_table(gt, np.full_like(gt, 255), ids),
        "score": {"images": images[:n], "gt": gt[:n], "distractor": distractor},
        "teacher": teacher_info,
    }


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One training run, mirroring trainables.train_loop.run_training in local mode (no Ray, no checkpoints)."""
    import torch

    from orchestrator.core.config import build_config
    from orchestrator.data.plan import build_plan
    from trainables.distributed import WorkerContext
    from trainables.models import build_student
    from trainables.optim import build_optimizer
    from trainables.streams import BrokenSamples, OODLabels, StreamFiles, StreamSampler
    from trainables.evaluation import evaluate
    from trainables.train_loop import runner_for, train_one_epoch, unlabeled_sizes

    torch.set_num_threads(job["threads"])
    cfg = build_config(job["config"])
    plan = build_plan(cfg, Path(job["cache_root"]))
    ctx = WorkerContext("local", 0, 1, torch.device("cpu"))
    seed = cfg.seed * 1000
    torch.manual_seed(seed)
    names = plan.vocabulary.names
    model = build_student(cfg.model.arch, len(names), width=cfg.model.width, fp_dropout=cfg.model.fp_dropout,
                          pretrained_backbone=cfg.model.pretrained_backbone)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.lr_multi, momentum=cfg.train.momentum,
                                weight_decay=cfg.train.weight_decay)
    table = job.get("table")
    ood_labels = OODLabels(table, cfg.ood.teacher_thresh) if table is not None and cfg.uses_ood else None
    files = StreamFiles(plan.labeled, plan.unlabeled, plan.ood if cfg.uses_ood else ())
    sampler = StreamSampler(files, ood_labels=ood_labels, crop=cfg.data.crop_size, seed=seed, broken=BrokenSamples(),
                            max_broken_share=cfg.data.max_broken_share)
    n_id, _ = unlabeled_sizes(cfg)
    iters = cfg.train.iters_per_epoch or max(1, len(sampler.unlabeled) // max(1, n_id or cfg.train.batch_size))
    runner = runner_for(model, optimizer, sampler, cfg, ctx, 0, iters)
    started, curve, logs = time.time(), [], {}
    for epoch in range(cfg.train.epochs):
        logs = train_one_epoch(runner, epoch * iters)
        curve.append(round(evaluate(model, plan.val, len(names), ctx)[1], 2))
    out = {"method": job["method"], "split": cfg.data.split, "seed": cfg.seed, "val_miou": curve[-1],
           "best_val_miou": max(curve), "curve": curve, "mask_ratio": round(logs.get("mask_ratio", 0.0), 3),
           "seconds": round(time.time() - started, 1)}
    score = job.get("score")
    if score is not None:  # the student's own quality on OOD images (is the teacher better than the student?)
        out.update(student_ood(model, score, len(names)))
    return out


def student_ood(model, score: dict[str, Any], num_classes: int) -> dict[str, float]:
    import torch

    from trainables.augment import to_tensor_normalized
    from trainables.metrics import ConfusionMatrix

    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(score["images"]), 64):
            x = torch.stack([to_tensor_normalized(im) for im in score["images"][s:s + 64]])
            preds.append(model(x).argmax(1).numpy())
    pred = np.concatenate(preds)
    m = ConfusionMatrix(num_classes)
    m.update(torch.from_numpy(pred), torch.from_numpy(score["gt"]))
    out = {"student_ood_miou": round(m.compute()[1], 2)}
    if score.get("distractor") is not None:
        out["student_distractor_to_background"] = round(float((pred[score["distractor"]] == 0).mean()), 3)
    return out


def summarize(rows: list[dict[str, Any]], methods: list[str], splits: list[str]) -> str:
    lines = ["", f"{'method':<17}" + "".join(f"{'split ' + s:>22}" for s in splits)]
    for method in methods:
        cells = []
        for split in splits:
            vals = [r["val_miou"] for r in rows if r["method"] == method and r["split"] == split]
            if not vals:
                cells.append(f"{'-':>22}")
                continue
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            cells.append(f"{np.mean(vals):>12.1f} ± {std:>4.1f} (n={len(vals)})")
        lines.append(f"{method:<17}" + "".join(cells))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", nargs="+", default=["16"], help="labeled splits (8 16 32 ...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (e.g. train.lr=0.05)")
    parser.add_argument("--cache", help="cache folder (default: the project's, .semiovs/cache or $SEMIOVS_HOME)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: shared machine)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--score-images", type=int, default=1000, help="OOD images used to score teacher/student")
    parser.add_argument("--json", help="also write all rows and the teacher info to this file")
    return parser.parse_args(argv)


def make_jobs(args: argparse.Namespace, base: dict[str, Any], prep: dict[str, Any], cache_root: Path) -> list[dict]:
    """One `run_one` job per split × seed × method, in that nesting order."""
    jobs = []
    for split in args.splits:
        for seed in args.seeds:
            for method in args.methods:
                config = {**base, **METHODS[method], "data.split": str(split), "seed": seed}
                table = {"semiovs-teacher": prep["teacher_table"], "semiovs-gt": prep["gt_table"]}.get(method)
                jobs.append({"method": method, "config": config, "cache_root": str(cache_root), "table": table,
                             "threads": args.threads,
                             "score": prep["score"] if method == "supervised" else None})
    return jobs


def run_jobs(jobs: list[dict], parallel: int) -> list[dict[str, Any]]:
    """Run the jobs (in `parallel` spawned processes when > 1), printing each row as it arrives."""
    rows = []
    if parallel <= 1:
        for job in jobs:
            rows.append(run_one(job))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        for row in pool.map(run_one, jobs):
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def print_summary(rows: list[dict[str, Any]], args: argparse.Namespace, teacher: dict[str, Any]) -> None:
    sup = [r["student_ood_miou"] for r in rows if "student_ood_miou" in r]
    print(summarize(rows, args.methods, [str(s) for s in args.splits]))
    print(f"\nID val mIoU (%), mean ± std over seeds {args.seeds}, after the last epoch.")
    print(f"teacher OOD mIoU {teacher.get('ood_miou', math.nan):.1f} (distractor px → background "
          f"{teacher.get('distractor_pixels_to_background', math.nan):.0%}); supervised student OOD mIoU "
          f"{np.mean(sup) if sup else math.nan:.1f} (on the same {teacher['scored_images']} OOD images)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    import torch

    from orchestrator.core.console import Console
    from orchestrator.core.paths import default_cache_root, resolve_root

    torch.set_num_threads(max(1, args.threads * args.jobs))
    cache_root = resolve_root(args.cache, default_cache_root())
    base = parse_set(args.set)
    log = Console(stream=sys.stderr).say
    print(f"# load average at start: {os.getloadavg()}; overrides: {base}", flush=True)
    started = time.time()
    prep = prepare(base, cache_root, args.score_images, log, need_teacher="semiovs-teacher" in args.methods)
    print(json.dumps({"teacher": prep["teacher"]}), flush=True)
    rows = run_jobs(make_jobs(args, base, prep, cache_root), args.jobs)
    print_summary(rows, args, prep["teacher"])
    print(f"# wall time {time.time() - started:.0f} s; load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": prep["teacher"], "rows": rows, "overrides": base}, indent=2))


if __name__ == "__main__":
    main()
