"""cluster.yaml passes the same checks `ray up` runs before it touches a cloud."""
import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).parent.parent / "cluster.yaml"


def validated(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(cfg))
    validate_config(cfg)
    return cfg


def test_cluster_yaml_validates_like_ray_up():
    cfg = validated(yaml.safe_load(CLUSTER.read_text()))
    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws"
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["max_workers"] > gpu[0].get("min_workers", 0)   # autoscaling GPU workers
    setup = " ".join(cfg["setup_commands"])
    assert "pip install -e ." in setup
    head = " ".join(cfg["head_setup_commands"])
    assert "mlflow server" in head and "--host 127.0.0.1" in head


def test_validation_catches_a_typo():
    cfg = yaml.safe_load(CLUSTER.read_text())
    cfg["max_worker"] = cfg.pop("max_workers")
    with pytest.raises(Exception, match="max_worker"):
        validated(cfg)


def test_a_node_without_the_shared_mount_fails_its_setup(tmp_path):
    """The mount command runs under bash with `mount` failing (no NFS server): it must exit non-zero, so the
    node never joins without the shared folder; with a working mount it succeeds."""
    import os
    import stat
    import subprocess

    cfg = yaml.safe_load(CLUSTER.read_text())
    mount_line = next(c for c in cfg["setup_commands"] if "/mnt/shared" in c)
    assert "|| true" not in mount_line and mount_line.count("EFS_DNS_NAME=") == 1
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def fake(name: str, body: str) -> None:
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)

    fake("sudo", 'exec "$@"')
    fake("mkdir", "exit 0")
    for mount_works in (False, True):
        state = tmp_path / "mounted"
        fake("mount", f"touch {state}; exit 0" if mount_works else "exit 32")
        fake("mountpoint", f"test -e {state}")
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-c", mount_line], env=env, capture_output=True)
        assert (done.returncode == 0) is mount_works, done


def test_spot_gpu_workers_are_an_option_and_trial_drivers_can_avoid_them():
    cfg = validated(yaml.safe_load(CLUSTER.read_text()))
    spot = cfg["available_node_types"]["gpu_spot_worker"]
    assert spot["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "on_demand" not in spot["resources"]
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["on_demand"] == 1
