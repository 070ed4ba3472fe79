"""A long CPU/GPU job before the trials (fitting the teacher, pretraining the student's encoder), run as a Ray
task when Ray is up (so a cluster can place it on a GPU's node) or in this process, with a progress bar.

The job is a function that takes `on_step(step)` as its last keyword argument and returns a result. It runs
in a thread of a streaming-generator task, which hands each step to the caller as it comes: {"step": n}
records, then {"result": value}.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


def job_threads(cpus: float, gpus: float, node_cpus: list[float]) -> int:
    """Threads (and CPUs reserved) for such a job. Nothing else runs meanwhile, so on CPU it takes a whole
    node: the largest one's CPUs. On a GPU the device does the work; it keeps `cpus`."""
    if gpus > 0 or not node_cpus:
        return max(1, int(cpus))
    return max(1, int(max(node_cpus)))


def _records(job: Callable[..., Any], threads: int, args: tuple):
    """The job as a stream of records: {"step": n} as it reports them, then {"result": value}. It runs in a
    thread; errors are raised again here, in the generator's own thread."""
    import queue
    import threading

    import torch

    records: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        torch.set_num_threads(max(1, threads))   # in the working thread: OpenMP's thread count is per thread
        try:
            outcome["result"] = job(*args, on_step=lambda step: records.put({"step": step}))
        except BaseException as err:   # noqa: BLE001 - re-raised below
            outcome["error"] = err
        finally:
            records.put(None)

    thread = threading.Thread(target=work, name="long-task", daemon=True)
    thread.start()
    while (record := records.get()) is not None:
        yield record
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield {"result": outcome["result"]}


def run_long_task(job: Callable[..., Any], args: tuple, *, label: str, total: int, unit: str, cpus: float,
                  gpus: float, progress=None) -> Any:
    """Run `job(*args, on_step=...)` where it belongs and show its steps; returns its result."""
    import ray

    from orchestrator.core.progress import silent

    if ray.is_initialized():
        node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    else:
        node_cpus = [float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())]
    threads = job_threads(cpus, gpus, node_cpus)
    if ray.is_initialized():
        # Passive OpenMP waits: spinning threads on a shared machine burnt 5x the CPU time per step (measured
        # under load: 0.83 vs 0.16 core-seconds per step at 2 threads); it is read when torch loads, hence a
        # worker started with it in its environment.
        task = ray.remote(_records).options(num_cpus=threads, num_gpus=gpus, num_returns="streaming",
                                            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
        records = (ray.get(ref) for ref in task.remote(job, threads, args))
    else:
        if "torch" not in sys.modules:   # in this process: passive waits too, if torch is not loaded yet
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        records = _records(job, threads, args)
    result = None
    with (progress or silent)(f"{label} ({threads} thread(s))", total, unit) as bar:
        for record in records:
            if "step" in record:
                bar.set(record["step"])
            result = record.get("result", result)
    return result
