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
