"""The pseudo-label cache decision: what changes the key, what does not, and reading with thresholds."""
import numpy as np
import pytest

from orchestrator.core.errors import UserError
from orchestrator.core.label_format import apply_threshold
from orchestrator.core.masks import decode_png, encode_png
from orchestrator.labels.store import LabelStore, cache_key, corpus_fingerprint, key_inputs
from orchestrator.core.paths import inside

BASE = dict(teacher_kind="textseg", weights_digest="w1", arch="", templates="single", resolution=0,
            sliding_window=False, vocabulary={"classes": [{"name": "background"}, {"name": "disk"}]},
            corpus="c1")


@pytest.mark.parametrize("change", [
    {"teacher_kind": "maskclip"}, {"weights_digest": "w2"}, {"templates": "imagenet80"}, {"resolution": 128},
    {"sliding_window": True}, {"corpus": "c2"},
    {"vocabulary": {"classes": [{"name": "background"}, {"name": "circle"}]}},
    {"vocabulary": {"classes": [{"name": "background"}, {"name": "disk"}], "background_concepts": ["hexagon"]}},
])
def test_any_input_that_changes_the_labels_changes_the_key(change):
    assert cache_key(key_inputs(**{**BASE, **change})) != cache_key(key_inputs(**BASE))


def test_class_order_and_code_version_change_the_key(monkeypatch):
    # Label ids are indices into the vocabulary: the same names in another order are other labels.
    swapped = {"classes": [{"name": "disk"}, {"name": "background"}]}
    assert cache_key(key_inputs(**{**BASE, "vocabulary": swapped})) != cache_key(key_inputs(**BASE))
    import orchestrator.labels.store as label_cache

    before = cache_key(key_inputs(**BASE))
    monkeypatch.setattr(label_cache, "LABELING_CODE_VERSION", "next")
    assert cache_key(key_inputs(**BASE)) != before


def test_same_inputs_same_key():
    assert cache_key(key_inputs(**BASE)) == cache_key(key_inputs(**dict(BASE)))


def test_key_of_known_inputs_is_pinned():
    # Existing caches are found by this key: the same inputs must keep giving it.
    assert cache_key(key_inputs(**BASE)) == "textseg-0ab57f7957240c73cc7c"


def test_thresholds_are_not_part_of_the_key():
    from orchestrator.core.config import build_config
    from orchestrator.labels.job import LABEL_KEYS

    assert "ood.teacher_thresh" not in LABEL_KEYS and "train.conf_thresh" not in LABEL_KEYS
    assert "teacher.templates" in LABEL_KEYS
    assert "thresh" not in str(key_inputs(**BASE))
    assert build_config({"ood.teacher_thresh": 0.7}).ood.teacher_thresh == 0.7


def test_corpus_fingerprint_follows_file_changes(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"1"), b.write_bytes(b"2")
    first = corpus_fingerprint([str(a), str(b)])
    assert corpus_fingerprint([str(a), str(b)]) == first
    assert corpus_fingerprint([str(a)]) != first
    b.write_bytes(b"22")
    assert corpus_fingerprint([str(a), str(b)]) != first


def test_threshold_applied_at_read_time():
    label = np.array([[1, 2], [3, 4]], np.uint8)
    conf = np.array([[255, 100], [200, 50]], np.uint8)
    out = apply_threshold(label, conf, 0.5)
    assert out.tolist() == [[1, 255], [3, 255]]
    assert apply_threshold(label, conf, 0.0) is label


def test_png_round_trip_is_exact():
    arr = np.random.default_rng(0).integers(0, 256, (7, 9)).astype(np.uint8)
    assert np.array_equal(decode_png(encode_png(arr)), arr)


def test_store_paths_never_escape_the_cache(tmp_path):
    assert LabelStore.at(tmp_path, "textseg-abc").root == tmp_path.resolve() / "labels" / "textseg-abc"
    with pytest.raises(UserError, match="escapes its root"):
        LabelStore.at(tmp_path, "../../etc")
    with pytest.raises(UserError, match="escapes its root"):
        inside(tmp_path, "/etc/passwd")


def test_incomplete_entry_is_not_a_hit(tmp_path):
    store = LabelStore.at(tmp_path, "k")
    (store.root / "shards").mkdir(parents=True)
    assert not store.is_complete()          # shards without a manifest are a torn write
    store.manifest_path.write_text("{}")
    assert store.is_complete()
