"""The sweep driver at thousands of trials: its memory, CPU, the MLflow writer's lag, `report`, and a kill + --resume.

    python benchmarks/driver_scale.py [--trials 2000] [--epochs 3] [--concurrent 4] [--cache DIR]

The REAL driver (`orchestrator.sweep.driver.run_sweep`: the Tune loop, the tracking writer and its callback)
against a real `mlflow server` on 127.0.0.1, with a stand-in trainable (`stand_in_trial`): it trains nothing,
reports `--epochs` epochs with the keys a real trial reports and writes one small picture per epoch where a real
trial's rank 0 does, so that everything the driver does per trial is what it does in a real sweep. It is set
through the driver's one injection point, `driver.TRIAL_FUNCTION`.

Two sweeps of `--trials` trials, each driver its own process (as `run.py sweep` is) with its own private Ray:
  1. uninterrupted: the driver's RSS after start-up, at 200 trials and at the end; its CPU seconds per trial; the
     writer's lag (from the last trial's end until MLflow holds every epoch and the writer's queue is empty);
     then the time `report` takes on the experiment;
  2. killed (SIGKILL of the driver and its Ray) once half the trials have started, then `--resume`d: MLflow must
     hold one child run per trial and every epoch once.
Goals (docs/results.md, Scale): RSS at the end ÷ RSS at 200 trials ≤ 1.25; writer lag ≤ 10 s. Prints one JSON line of figures.

This module's top level imports only the standard library: Tune imports it in every trial's process.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PICTURE = "confusion_matrix_epoch_{epoch:03d}.png"   # a name the driver's EpochLogger picks up (`*_epoch_NNN.png`)
CLASSES = ("background", "disk", "square", "triangle", "cross", "ring")   # the `shapes` benchmark's
LRS = (0.01, 0.02, 0.05, 0.1)
RSS_MARK = 200   # trials done when the "early" RSS is read (the goal compares the end with it)


# ---- the stand-in trial (runs in Tune's trial processes) -------------------------------------------------------

def tiny_png(size: int = 8) -> bytes:
    """A valid size × size grey PNG (~70 bytes): a picture file without drawing one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(range(0, 256, 256 // size))[:size] for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def epoch_metrics(trial_id: str, epoch: int, epochs: int, best: float) -> dict:
    """The keys a real SemiOVS trial reports for an epoch (trainables/train_loop.py: 27 numbers, 28 the first
    time, and the test split's 8 more at the last epoch), with made-up values: Tune keeps state per key, so the
    number of keys matters."""
    seed = zlib.crc32(f"{trial_id}/{epoch}".encode()) / 0xFFFFFFFF
    miou = 20.0 + 10.0 * epoch / epochs + 5.0 * seed
    out = {"epoch": epoch, "val_miou": miou, "best_val_miou": max(best, miou), "loss": 1.0 / epoch,
           "loss_x": 1.2 / epoch, "loss_u": 0.5 / epoch, "loss_ood": 0.8 / epoch, "mask_ratio": 0.5,
           "ood_conf_ratio": 0.9, "ood_label_coverage": 100.0, "ood_label_agreement": 80.0 + seed,
           "ood_label_object_precision": 20.0 + seed, "lr": 0.01 / epoch, "train_seconds": 0.01,
           "input_wait_share": 0.0, "broken_samples": 0, "epoch_seconds": 0.01, "step": 4 * epoch,
           "resumed_from_epoch": 0, "teacher_ood_precision": 24.7, "teacher_ood_miou": 24.3,
           **{f"val_iou.{name}": miou + i for i, name in enumerate(CLASSES)}}
    if epoch == 1:
        out["startup_seconds"] = 0.0
    if epoch == epochs:
        out.update({"test_miou": miou, "test_epoch": epoch, **{f"test_iou.{name}": miou - i
                                                               for i, name in enumerate(CLASSES)}})
    return out


def stand_in_trial(config, base, cache_root, storage, files_root, label_stores, encoders, selection) -> None:
    """orchestrator.trial.run_trial's signature; no training: each epoch writes its picture where rank 0 of a real
    trial does (core.paths.run_files_dir), then reports the epoch's numbers to Tune."""
    import ray.tune

    from orchestrator.core.paths import run_files_dir, train_run_name

    trial_id = ray.tune.get_context().get_trial_id()
    folder = run_files_dir(Path(files_root), train_run_name(trial_id))
    folder.mkdir(parents=True, exist_ok=True)
    epochs, best, picture = int(base["train.epochs"]), 0.0, tiny_png()
    for epoch in range(1, epochs + 1):
        path = folder / PICTURE.format(epoch=epoch)
        tmp = path.with_name(f".{path.name}.tmp")   # whole or absent, as trainables/pictures.py writes them
        tmp.write_bytes(picture)
        tmp.replace(path)
        metrics = epoch_metrics(trial_id, epoch, epochs, best)
        best = metrics["best_val_miou"]
        ray.tune.report({**metrics, "reported_at": time.time()})


def space_text(name: str, trials: int, epochs: int) -> str:
    """`trials` trials: one a seed (a grid), each with one of the LRS (so the report has ~trials/4 seeds a group)."""
    from tests.conftest import TINY

    data = {k: v for k, v in TINY.items() if k.startswith("data.")}   # the data the driver makes: the suite's tiny one
    return json.dumps({   # JSON is YAML
        "name": name, "metric": "val_miou", "mode": "max", "scheduler": "fifo", "log_models": "none",
        # one Train worker: the trial's Tune function holds no CPU (plan.driver_resources), so --concurrent decides
        "fixed": {**data, "train.method": "supervised", "train.epochs": epochs, "train.num_workers": 1},
        "parameters": {"seed": {"grid": list(range(trials))}, "train.lr": {"choice": list(LRS)}}})


# ---- the driver process ----------------------------------------------------------------------------------------

class Monitor(threading.Thread):
    """Samples the driver process (this one) every `period` s: RSS, CPU seconds (less the monitor's own), trials
    done (their last picture is on disk), and whether the writer's queue is empty with every epoch of every trial
    logged. Counts start from the trials done before this process (a resumed sweep's)."""

    def __init__(self, sweep_dir: str, files: Path, trials: int, epochs: int, period: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.sweep_dir, self.files, self.trials, self.epochs = psutil.Process(), sweep_dir, files, trials, \
            epochs
        self.period, self.halt, self.done, self.before = period, threading.Event(), set(), None
        self.first = self.at_mark = self.at_end = self.writer_done = None   # (time, rss, cpu, trials done)
        self.peak, self.own_cpu = 0, 0.0
        self.timeline: list[tuple[int, float]] = []   # (trials done, RSS MB) each time another tenth is done

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sample()

    def sample(self) -> None:
        began = time.thread_time()
        now, rss = time.time(), self.proc.memory_info().rss
        cpu = sum(self.proc.cpu_times()[:2]) - self.own_cpu
        self.peak = max(self.peak, rss)
        last = PICTURE.format(epoch=self.epochs)
        try:
            names = [e.name for e in os.scandir(self.files) if e.name not in self.done]
        except FileNotFoundError:
            names = []
        self.done.update(n for n in names if (self.files / n / last).is_file())
        done = len(self.done)
        if self.before is None:
            self.before = done
        todo = self.trials - self.before
        if self.first is None and done > self.before:   # this driver's first trial is done: start-up is over
            self.first = (now, rss, cpu, done)
        if done - self.before >= (len(self.timeline) + 1) * max(1, todo // 10):
            self.timeline.append((done, round(rss / 2 ** 20, 1)))
        if self.at_mark is None and done - self.before >= min(RSS_MARK, todo):
            self.at_mark = (now, rss, cpu, done)
        if self.at_end is None and done >= self.trials:
            self.at_end = (now, rss, cpu, done)
        if self.at_end is not None and self.writer_done is None and self.all_logged():
            self.writer_done = (now, rss, cpu, done)
        self.own_cpu += time.thread_time() - began

    def all_logged(self) -> bool:
        from orchestrator.tracking.callback import active

        try:
            ledger, writer = active(self.sweep_dir)
        except KeyError:
            return False
        loggers = list(ledger.loggers.values())
        return writer.pending() == 0 and len(loggers) >= self.trials and \
            all(len(logger.logged) >= self.epochs for logger in loggers)

    def figures(self, last_end: float) -> dict:
        mb = 1 / 2 ** 20
        out: dict = {"rss_mb_by_trials_done": self.timeline}
        if self.first and self.at_end:
            (t0, rss0, cpu0, done0), (t1, rss1, cpu1, done1) = self.first, self.at_end
            out.update({"rss_after_startup_mb": round(rss0 * mb, 1), "rss_at_end_mb": round(rss1 * mb, 1),
                        "peak_rss_trial_phase_mb": round(self.peak * mb, 1), "trial_phase_s": round(t1 - t0, 1),
                        "trials_per_s": round((done1 - done0) / max(t1 - t0, 1e-9), 3),
                        "driver_cpu_s_per_trial": round((cpu1 - cpu0) / max(done1 - done0, 1), 4)})
            if self.at_mark:
                out.update({f"rss_at_{self.at_mark[3]}_trials_mb": round(self.at_mark[1] * mb, 1),
                            "rss_ratio_end_to_mark": round(rss1 / self.at_mark[1], 3)})
        if self.writer_done:
            out["writer_lag_s"] = round(self.writer_done[0] - last_end, 2)
        return out


def last_trial_end(files: Path, epochs: int) -> float:
    """When the last trial ended: the newest last-epoch picture (written just before its last report)."""
    return max(p.stat().st_mtime for p in files.glob(f"*/{PICTURE.format(epoch=epochs)}"))


def drive(argv: list[str]) -> None:
    """One `run.py sweep` with the stand-in trainable; writes the driver's figures as JSON to --figures."""
    import argparse
    import resource

    from orchestrator.core import storage as store
    from orchestrator.sweep import driver

    parser = argparse.ArgumentParser()
    for flag in ("--space", "--storage", "--cache", "--tracking-uri", "--figures"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--concurrent", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    name = json.loads(Path(args.space).read_text())["name"]
    files = Path(args.storage) / name / "files"
    monitor = Monitor(store.join(args.storage, name), files, args.trials, args.epochs)
    monitor.start()
    driver.TRIAL_FUNCTION = stand_in_trial   # the driver's injection point: everything else is the real driver
    began = time.time()
    out = driver.run_sweep(driver.SweepRequest(space=args.space, storage=args.storage, cache=args.cache,
                                               tracking_uri=args.tracking_uri, resume=args.resume, quiet=True,
                                               max_concurrent=args.concurrent))
    returned = time.time()
    monitor.halt.set()
    monitor.join()
    monitor.sample()
    end = last_trial_end(files, args.epochs)
    figures = {"trials": len(out.rows), "done": sum(r.status == "done" for r in out.rows),
               "sweep_s": round(returned - began, 1), "unlogged": out.unlogged,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "after_last_trial_s": round(returned - end, 1),   # the last trial's end → run_sweep returned
               **monitor.figures(end)}
    Path(args.figures).write_text(json.dumps(figures))


# ---- the harness (the benchmark's process, or a test's) --------------------------------------------------------

def driver_command(folder: Path, uri: str, cache: Path, trials: int, epochs: int, concurrent: int, name: str,
                   resume: bool = False) -> list[str]:
    space = folder / f"{name}.json"
    space.write_text(space_text(name, trials, epochs))
    return [sys.executable, str(Path(__file__).resolve()), "drive", "--space", str(space),
            "--storage", str(folder / "runs"), "--cache", str(cache), "--tracking-uri", uri,
            "--figures", str(folder / f"{name}{'-resumed' if resume else ''}.figures.json"), "--trials", str(trials),
            "--epochs", str(epochs), "--concurrent", str(concurrent), *(["--resume"] if resume else [])]


# Ray waits a fixed 30 s (ray/_private/node.py, not configurable) for a new node's raylet to register; on two
# cores busy with another test's sweep, a private instance started right after a killed one can miss it. The
# sweep is untouched by that failure (it fails before Tune starts), so the driver is started again.
RAY_START_TIMEOUT = "The current node timed out during startup"


def run_driver(command: list[str], folder: Path, kill_when=None, timeout_s: float = 3600,
               start_retries: int = 1) -> dict | None:
    """Run a driver process to its end (its figures), or SIGKILL it and its private Ray (its process group) as
    soon as `kill_when()` holds (None). A driver whose Ray did not start in time is started again
    (`start_retries` times)."""
    log_path = folder / "driver.log"
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
                                    str(ROOT), os.environ.get("PYTHONPATH"))))})
    deadline = time.time() + timeout_s
    try:
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                kill_tree(proc)
                return None
            if time.time() > deadline:
                raise TimeoutError(f"the driver ran over {timeout_s:.0f} s; see {log_path}")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        if RAY_START_TIMEOUT in tail and start_retries > 0:
            return run_driver(command, folder, kill_when, timeout_s, start_retries - 1)
        raise RuntimeError(f"the driver exited {proc.returncode}:\n{tail}")
    figures = Path(command[command.index("--figures") + 1])
    return json.loads(figures.read_text())


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, its private Ray and that Ray's workers: its process group, and every process under it
    (Ray's workers start sessions of their own, so the group alone would leave them behind)."""
    import psutil

    try:
        under = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        under = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in under:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def started_trials(files: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(files))
    except FileNotFoundError:
        return 0


def mlflow_check(uri: str, name: str, trials: int, epochs: int, pictures_of: int | None = None) -> dict:
    """What MLflow holds of the sweep: child runs per trial, the epochs each run holds (each once), its pictures
    (`eval/`, one an epoch; of the first `pictures_of` runs, default all), statuses, parent runs."""
    from orchestrator.tracking import client as mlflow_runs

    experiment_id = mlflow_runs.experiment_id_of(uri, name)
    runs = mlflow_runs.find_runs(uri, experiment_id, role=mlflow_runs.ROLE_TRIAL)
    per_trial = Counter(r.data.tags["trial_id"] for r in runs)
    c = mlflow_runs.client(uri)
    steps = [sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_miou")) for r in runs]
    every = list(range(1, epochs + 1))
    pictured = runs if pictures_of is None else runs[:pictures_of]
    pictures = [sorted(a.path for a in c.list_artifacts(r.info.run_id, "eval")) for r in pictured]
    parents = mlflow_runs.find_runs(uri, experiment_id, role=mlflow_runs.ROLE_SWEEP)
    return {"trials": len(per_trial), "runs": len(runs), "duplicate_runs": sum(n - 1 for n in per_trial.values()),
            "runs_with_every_epoch_once": sum(s == every for s in steps),
            "runs_checked_for_pictures": len(pictured),
            "runs_with_one_picture_an_epoch": sum(p == [f"eval/{PICTURE.format(epoch=e)}" for e in every]
                                                  for p in pictures),
            "finished_runs": sum(r.info.status == "FINISHED" for r in runs),
            "parents": len(parents), "parents_finished": sum(p.info.status == "FINISHED" for p in parents)}


def timed_report(uri: str, name: str, out: Path) -> dict:
    from orchestrator.tracking.report import write_report

    began = time.time()
    summary = write_report(uri, name, out)
    return {"report_s": round(time.time() - began, 1), "report_trials": summary["trials"],
            "report_groups": summary["groups"]}


def killed_and_resumed(folder: Path, uri: str, cache: Path, trials: int, epochs: int, concurrent: int,
                       name: str) -> dict:
    """Kill the driver once half the trials have started, resume it; the resumed driver's figures."""
    files = folder / "runs" / name / "files"
    began = time.time()
    run_driver(driver_command(folder, uri, cache, trials, epochs, concurrent, name), folder,
               kill_when=lambda: started_trials(files) >= trials // 2)
    at_kill = started_trials(files)
    figures = run_driver(driver_command(folder, uri, cache, trials, epochs, concurrent, name, resume=True), folder)
    return {"killed_at_started_trials": at_kill, "kill_and_resume_s": round(time.time() - began, 1),
            "resumed": figures}


def prepare_cache(cache: Path) -> None:
    """The `shapes` data a sweep's driver makes before its trials (the stand-in never reads it), made once."""
    from orchestrator.core.config import build_config
    from orchestrator.data.plan import dataset_root

    from tests.conftest import TINY

    dataset_root(build_config({k: v for k, v in TINY.items() if k.startswith("data.")}, "driver_scale"), cache)


def main() -> None:
    import argparse
    import tempfile

    sys.path.insert(0, str(ROOT))
    from tests.test_tracking_outage import Server

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=4, help="trials at once (default 4)")
    parser.add_argument("--cache", help="cache folder (default: a temporary one; the data is generated once)")
    parser.add_argument("--skip-resume", action="store_true", help="only the uninterrupted sweep")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
        folder = Path(tmp)
        cache = Path(args.cache) if args.cache else folder / "cache"
        prepare_cache(cache)
        server = Server(folder)
        server.start()
        try:
            figures = run_driver(driver_command(folder, server.url, cache, args.trials, args.epochs, args.concurrent,
                                                "scale"), folder)
            figures.update(timed_report(server.url, "scale", folder / "report"))
            figures["mlflow"] = mlflow_check(server.url, "scale", args.trials, args.epochs, pictures_of=100)
            if not args.skip_resume:
                resumed = killed_and_resumed(folder, server.url, cache, args.trials, args.epochs, args.concurrent,
                                             "scale-resume")
                resumed["mlflow"] = mlflow_check(server.url, "scale-resume", args.trials, args.epochs, 100)
                figures["kill_and_resume"] = resumed
        finally:
            server.kill()
    print(json.dumps({"figure": "the sweep driver at scale (stand-in trainable, real Tune, writer, mlflow server)",
                      "trials": args.trials, "epochs": args.epochs, "concurrent": args.concurrent,
                      "load_average": [round(x, 2) for x in load], "load_average_after": [
                          round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(), **figures}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["drive"]:
        sys.path.insert(0, str(ROOT))
        from benchmarks.driver_scale import drive as _drive   # the stand-in by its module name, not __main__'s

        _drive(sys.argv[2:])
    else:
        main()
