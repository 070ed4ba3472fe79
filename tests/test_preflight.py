"""Which Ray, and the shared-storage preflight: the pure decisions, and the check on the session's real Ray."""
import pytest

from orchestrator.core.errors import UserError
from orchestrator.core.nodes import describe_node
from orchestrator.preflight import NodeSight, blind_spots, not_shared_message, require_visible
from orchestrator.runtime import choose_target


def test_a_cluster_is_joined_only_when_asked():
    assert choose_target(None, {}).address == "local"                     # never ray.init() with no address
    assert not choose_target(None, {"RAY_ADDRESS": ""}).joins_cluster
    env = choose_target(None, {"RAY_ADDRESS": "127.0.0.1:6379"})
    assert env.joins_cluster and (env.address, env.source) == ("127.0.0.1:6379", "RAY_ADDRESS")
    flag = choose_target("10.0.0.5:6379", {"RAY_ADDRESS": "127.0.0.1:6379"})
    assert (flag.address, flag.source) == ("10.0.0.5:6379", "--ray-address")


def test_a_folder_one_node_cannot_see_is_named_with_the_node_and_the_fix():
    head = describe_node("10.0.0.1", "a" * 56, {"CPU": 0.0, "node:10.0.0.1": 1.0})
    worker = describe_node("10.0.0.2", "b" * 56, {"CPU": 8.0, "GPU": 1.0, "gpu_pool": 1.0})
    assert worker == "10.0.0.2 (node bbbbbbbb, resources gpu_pool)" and head == "10.0.0.1 (node aaaaaaaa)"
    sights = [NodeSight(head, frozenset({"cache", "storage"})), NodeSight(worker, frozenset({"storage"}))]
    assert blind_spots(sights, {"cache": "/c", "storage": "/s"}) == [("cache", worker)]
    assert blind_spots(sights[:1], {"cache": "/c", "storage": "/s"}) == []
    message = not_shared_message("cache", "/home/me/.semiovs/cache", worker)
    assert message.startswith("the cache folder /home/me/.semiovs/cache is not visible from Ray node 10.0.0.2")
    assert "Fix: put the cache and the storage on a filesystem every node mounts" in message
    assert "--cache DIR and --storage DIR" in message


def test_a_trial_checks_the_lasting_marker(tmp_path):
    require_visible("storage", "s3://bucket/prefix")        # a URI is the same place from every node
    (tmp_path / ".semiovs-root").write_text("x")
    require_visible("cache", tmp_path)


@pytest.mark.e2e
def test_preflight_passes_on_one_machine_and_leaves_only_the_lasting_markers(ray_session, tmp_path):
    from orchestrator.preflight import ROOT_MARKER, check_shared_folders

    cache, storage = tmp_path / "cache", tmp_path / "storage"
    check_shared_folders({"cache": cache, "storage": storage})
    assert sorted(p.name for p in cache.iterdir()) == [ROOT_MARKER]
    assert sorted(p.name for p in storage.iterdir()) == [ROOT_MARKER]
    require_visible("cache", cache)
    with pytest.raises(UserError, match=r"the cache folder .*/elsewhere is not visible from Ray node .* Fix:"):
        require_visible("cache", tmp_path / "elsewhere")
