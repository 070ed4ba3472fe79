"""SemiOVS experiment orchestrator on Ray: the Python API (what `run.py` calls).

    from orchestrator import SweepRequest, run_sweep, TrainRequest, run_single, write_report

    outcome = run_sweep(SweepRequest(space="search_spaces/smoke.yaml", name="smoke-api"))
    print(outcome.table)                                    # one row per trial; MLflow holds the rest
    run_single(TrainRequest(overrides={"train.method": "unimatch", "train.num_workers": 0}))
    write_report("sqlite:///mlflow.db", ["smoke-api"], Path("reports/smoke-api"))

Names load on first use, so `import orchestrator` (and the `orchestrator.core` foundation under it) stays cheap.
The code map and data flow are in docs/architecture.md; the method as implemented in docs/method.md.
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "SweepRequest": "orchestrator.sweep.driver", "SweepOutcome": "orchestrator.sweep.driver",
    "run_sweep": "orchestrator.sweep.driver",
    "TrainRequest": "orchestrator.single_run", "run_single": "orchestrator.single_run",
    "write_report": "orchestrator.tracking.report",
    "ensure_labels": "orchestrator.labels.job",
    "ExperimentConfig": "orchestrator.core.config", "build_config": "orchestrator.core.config",
    "UserError": "orchestrator.core.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute '{name}'")
