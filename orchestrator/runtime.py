"""Starting (or joining) Ray, the same way for every command."""
from __future__ import annotations

import os


def init_ray(quiet: bool = False, num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS (a cluster or `ray start` head) or start a local Ray.

    The dashboard stays on: Ray Train's placement-group cleaner asks its state API whether a stopped trial's
    controller is gone; without it, trials stopped early by ASHA leak their workers (ray #54305).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    kwargs = {"log_to_driver": not quiet, "include_dashboard": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", **kwargs)
