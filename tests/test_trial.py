"""The trial driver reads the label store the sweep driver made for its LabelRequest; it never re-derives a key."""
import pytest

from orchestrator.core.config import build_config
from orchestrator.core.errors import UserError
from orchestrator.labels.job import LabelRequest
from orchestrator.trial import label_store_for


def test_a_trial_gets_the_store_of_its_request_and_none_without_teacher_labels(tmp_path):
    entry = tmp_path / "labels" / "textseg-abc"
    entry.mkdir(parents=True)
    (entry / "manifest.json").write_text("{}")
    cfg = build_config({"train.method": "semiovs", "ood.ratio": 0.5, "ood.teacher_thresh": 0.7, "data.split": "8"})
    stores = {LabelRequest.from_config(build_config({"train.method": "semiovs"})): str(entry)}
    assert label_store_for(cfg, stores) == str(entry)      # threshold, ratio and split share the entry
    assert label_store_for(build_config({"train.method": "unimatch"}), {}) is None


def test_a_trial_whose_labels_were_never_made_says_how_to_make_them(tmp_path):
    cfg = build_config({"train.method": "semiovs", "teacher.templates": "imagenet80"})
    other = {LabelRequest.from_config(build_config({"train.method": "semiovs"})): str(tmp_path)}
    with pytest.raises(UserError, match=r"not in the cache \(never labeled\)\. Fix: run `python run.py label`"):
        label_store_for(cfg, other)
    incomplete = {LabelRequest.from_config(cfg): str(tmp_path / "torn")}   # no manifest: not complete
    with pytest.raises(UserError, match="torn"):
        label_store_for(cfg, incomplete)
