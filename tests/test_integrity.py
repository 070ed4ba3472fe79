"""Cache integrity: a label shard or a fitted teacher truncated or changed after it was written is found
before it is used: the reader names the entry and how to rebuild it, and the driver rebuilds it itself."""
from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from orchestrator.core.errors import UserError
from orchestrator.core.label_format import DamagedEntry, read_label_table, shard_problems
from tests.conftest import TINY
from tests.test_labeling import calls, counting_actor, make_corpus, make_job, teacher_ckpt  # noqa: F401 (fixture)


def _truncate(path, keep: float = 0.5) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.e2e
def test_a_damaged_label_shard_is_named_when_read_and_relabeled_by_the_driver(ray_session, teacher_ckpt, tmp_path,
                                                                               monkeypatch):
    import orchestrator.labels.pipeline as labeling

    items = make_corpus(tmp_path / "ood", 16)
    log = tmp_path / "calls.txt"
    monkeypatch.setattr(labeling, "TeacherActor", counting_actor(log, "run"))
    job = make_job(tmp_path / "cache", items, teacher_ckpt)
    labeling.run_labeling(job)
    entry = job.store.root
    recorded = json.loads((entry / "manifest.json").read_text())["shards"]
    shards = sorted((entry / "shards").glob("*.parquet"))
    assert shards and {s.name for s in shards} == set(recorded) and len(read_label_table(entry)) == 16

    _truncate(shards[0])   # e.g. a copy to shared storage cut short
    with pytest.raises(DamagedEntry) as err:
        read_label_table(entry)   # what a trial's worker calls
    message = str(err.value)
    assert f"entry {entry} is damaged: {shards[0]} has" in message and "truncated" in message
    assert "--resume" in message and "python run.py label" in message and "\n" not in message

    before = sum(n for _, n in calls(log))
    out = labeling.run_labeling(make_job(tmp_path / "cache", items, teacher_ckpt))   # the driver, before trials
    assert not out.reused and out.labeled == 16 and sum(n for _, n in calls(log)) == before + 16
    assert shard_problems(entry) == [] and len(read_label_table(entry)) == 16

    _flip_byte(sorted((entry / "shards").glob("*.parquet"))[0])   # same size, other content
    with pytest.raises(DamagedEntry, match="changed after it was written"):
        read_label_table(entry)
    stray = entry / "shards" / "extra.parquet"
    shutil.copy(sorted((entry / "shards").glob("*.parquet"))[0], stray)
    assert any("was not written by the labeling run" in p for p in shard_problems(entry))


def test_an_entry_from_before_checksums_is_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = tmp_path / "labels" / "old"
    (entry / "shards").mkdir(parents=True)
    pq.write_table(pa.table({"image_id": ["a"], "label": [b"l"], "confidence": [b"c"], "error": [""]}),
                   entry / "shards" / "0.parquet")
    (entry / "manifest.json").write_text(json.dumps({"images": 1}))
    assert read_label_table(entry) == {"a": (b"l", b"c")}
    (entry / "manifest.json").write_text("{not json")
    with pytest.raises(DamagedEntry, match="its manifest cannot be read"):
        read_label_table(entry)


def test_a_damaged_fitted_teacher_is_fitted_again_before_use(tmp_path, shared_cache):
    from orchestrator.core.config import build_config
    from orchestrator.data.plan import dataset_root
    from orchestrator.teachers.fit_task import checksum_file, ensure_fitted_teacher, teacher_file_problem

    cfg = build_config({**TINY, "teacher.fit_steps": 2})
    root = dataset_root(cfg, shared_cache)   # the session's tiny benchmark; this teacher goes to tmp_path
    said: list[str] = []
    path = ensure_fitted_teacher(cfg, tmp_path, root, said.append)
    assert checksum_file(path).is_file() and teacher_file_problem(path) is None

    _truncate(path)
    assert "truncated" in teacher_file_problem(path)
    assert ensure_fitted_teacher(cfg, tmp_path, root, said.append) == path
    assert any("is damaged" in line and "fitting it again" in line for line in said)
    assert teacher_file_problem(path) is None and zipfile.is_zipfile(path)

    _flip_byte(path)
    assert "changed after it was written" in teacher_file_problem(path)

    checksum_file(path).unlink()           # a file fitted before checksums existed
    _truncate(path)
    assert "not a complete checkpoint" in teacher_file_problem(path)


def test_a_truncated_teacher_file_given_by_the_user_is_refused_with_its_path(tmp_path, teacher_ckpt):
    from orchestrator.core.config import build_config
    from orchestrator.teachers.fit_task import teacher_spec

    broken = tmp_path / "mine.pt"
    shutil.copy(teacher_ckpt, broken)
    _truncate(broken, 0.8)
    cfg = build_config({"teacher.pretrained": str(broken)})
    with pytest.raises(UserError, match=f"teacher.pretrained: '{broken}' is not a complete torch checkpoint"):
        teacher_spec(cfg, tmp_path, tmp_path)
