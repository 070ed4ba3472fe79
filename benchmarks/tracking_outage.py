"""A sweep's wall time with a 30 s tracking-server outage ÷ the same sweep without one, in one run.

    python benchmarks/tracking_outage.py [--epochs 3] [--outage 30] [--cache DIR]

Both sweeps: two TINY supervised trials one after the other, each against its own fresh `mlflow server` on
127.0.0.1. In the second the server is killed after the first trial's first epoch and restarted 30 s later
on the same store. Training should not wait for MLflow, so the ratio should be about 1 (it grows only when
the sweep ends before the server is back: the end of the sweep then waits for it, up to
SEMIOVS_MLFLOW_GRACE_S). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import TINY  # noqa: E402  (the suite's tiny settings)
from tests.test_tracking_outage import SPACE, Server, outage_after_first_epoch  # noqa: E402


def one_sweep(folder: Path, cache: Path, epochs: int, outage: float | None) -> dict:
    from orchestrator.sweep.driver import SweepRequest, run_sweep

    folder.mkdir(parents=True)
    server = Server(folder)
    server.start()
    space = folder / "space.yaml"
    space.write_text(SPACE)
    events: dict = {}
    if outage is not None:
        threading.Thread(target=outage_after_first_epoch, args=(server, folder / "runs" / "outage", events, outage),
                         daemon=True).start()
    began = time.time()
    try:
        out = run_sweep(SweepRequest(space=str(space), storage=str(folder / "runs"), cache=str(cache),
                                     tracking_uri=server.url, max_concurrent=1, quiet=True,
                                     overrides={**TINY, "train.epochs": epochs}))
    finally:
        seconds = time.time() - began
        server.kill()
    return {"seconds": round(seconds, 1), "trial_seconds": [round(r.seconds, 1) for r in out.rows],
            "unlogged": out.unlogged, "server_back_after_s": round(events["back"] - events["killed"], 1)
            if "back" in events else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--cache", help="cache folder (default: a temporary one; data is generated once)")
    args = parser.parse_args()
    from orchestrator.runtime import init_ray

    init_ray(num_cpus=2, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        from orchestrator.core.config import build_config
        from orchestrator.data.plan import dataset_root

        dataset_root(build_config(TINY, "TINY"), cache)   # generated before both sweeps, timed in neither
        plain = one_sweep(Path(tmp) / "plain", cache, args.epochs, None)
        outage = one_sweep(Path(tmp) / "outage", cache, args.epochs, args.outage)
    print(json.dumps({"figure": "sweep wall time with a tracking outage / without", "outage_s": args.outage,
                      "without": plain, "with": outage, "ratio": round(outage["seconds"] / plain["seconds"], 2)}))


if __name__ == "__main__":
    main()
