"""Every GPU path the config can select, exercised once on a small benchmark: one JSON line of figures.

    python benchmarks/gpu_check.py [--keep DIR]

For a machine with CUDA GPUs (under 5 minutes on one GPU). It runs, through the real commands (`run.py`), in a
fresh folder (or --keep DIR):
  1. labeling on a Ray Data actor pool, one teacher actor per GPU (`resources.gpus_per_teacher=1`);
  2. training with Ray Train on every GPU present (nccl DDP when there are two or more), in bf16 where the GPU
     has it and in fp16 with loss scaling, in `channels_last` with `cudnn_benchmark`, fed by 2
     `train.loader_workers` per worker: the epoch's waiting share (`input_wait_share`) is read back from MLflow;
  3. `run.py predict` with the trained model on one GPU actor.
Each step's figures (wall seconds, images/s, mIoU, waiting share, exit code) go into one JSON line. A step that
fails is recorded with its exit code and the last lines of its output, and the others still run; the script
exits 1 if any failed. On a machine without a CUDA GPU it says so in its JSON line and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"data.num_train": 400, "data.num_val": 100, "data.num_test": 0, "data.num_ood": 600,
         "data.num_source": 400, "teacher.fit_steps": 150}


def sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def run(step: str, args: list[str], folder: Path, figures: dict) -> dict | None:
    """`python run.py ARGS` in `folder`; its last stdout line as JSON (None on failure, recorded in figures)."""
    began = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "SEMIOVS_HOME": str(folder / ".semiovs")})
    entry = {"seconds": round(time.time() - began, 1), "exit": proc.returncode}
    figures[step] = entry
    if proc.returncode != 0:
        entry["tail"] = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return None
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1][lines[-1].index("{"):]) if lines else {}


def wait_share(folder: Path, run_id: str) -> float | None:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").get_metric_history(run_id, "input_wait_share")
    return round(history[-1].value, 3) if history else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        print(json.dumps({"gpus": 0, "checked": False, "reason": "no CUDA GPU on this machine: nothing to check"}))
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="semiovs-gpu-check-"))
    folder.mkdir(parents=True, exist_ok=True)
    bf16 = torch.cuda.is_bf16_supported()
    figures: dict = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "bf16_supported": bf16,
                     "folder": str(folder)}

    label = run("label_gpu_actors", ["label", *sets({**SMALL, "resources.teacher_actors": gpus,
                                                      "resources.gpus_per_teacher": 1})], folder, figures)
    if label:
        figures["label_gpu_actors"].update({k: label.get(k) for k in ("labeled", "images_per_s", "reused")})

    trained = None
    for dtype in (["bf16"] if bf16 else []) + ["fp16"]:
        step = f"train_ddp_{dtype}"
        out = run(step, ["train", *sets({**SMALL, "train.num_workers": gpus, "resources.gpus_per_worker": 1,
                                         "resources.cpus_per_worker": 3, "train.loader_workers": 2,
                                         "train.amp": True, "train.amp_dtype": dtype, "train.channels_last": True,
                                         "train.cudnn_benchmark": True, "train.epochs": 2,
                                         "train.iters_per_epoch": 20})], folder, figures)
        if out:
            figures[step].update({"best_val_miou": out.get("best_val_miou"), "nccl": gpus > 1,
                                  "input_wait_share": wait_share(folder, out["run_id"])})
            trained = trained or out.get("model_uri")

    if trained:
        images = next((folder / ".semiovs" / "cache" / "data").glob("shapes-*/JPEGImages"), None)
        run("predict_gpu_actor", ["predict", "--model", trained, "--images", str(images), "--out",
                                  str(folder / "predicted"), "--gpus-per-actor", "1", "--overwrite"], folder, figures)
        masks = sum(1 for _ in (folder / "predicted").rglob("*.png")) if (folder / "predicted").is_dir() else 0
        figures["predict_gpu_actor"]["masks"] = masks
    failed = [step for step, entry in figures.items() if isinstance(entry, dict) and entry.get("exit")]
    figures["failed_steps"] = failed
    print(json.dumps(figures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
