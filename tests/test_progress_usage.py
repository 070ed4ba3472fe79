"""Progress lines with an ETA, the trial phase's core accounting, the labeling tally, the fit's threads, and the
Ray lines that are silenced: pure functions on real files (no Ray)."""
from __future__ import annotations

import io
import os
import re
import time

import numpy as np
import pytest

from orchestrator.core.progress import Progress, progress_line, silent


def test_progress_line_has_rate_and_eta():
    assert progress_line("teacher fit", 300, 1500, 24.0, "step", rate=12.5) == \
        "teacher fit: 300/1500 step (20%), 12.5 step/s, elapsed 24s, ETA 1m36s"
    assert progress_line("labeling", 64, 4000, 80.0, "image") == "labeling: 64/4000 image (2%), elapsed 1m20s"


def test_progress_prints_a_line_every_few_seconds_when_not_a_terminal():
    now = [0.0]
    out = io.StringIO()   # not a terminal: plain lines, no bar
    bar = Progress("labeling", 100, "image", stream=out, every=5.0, clock=lambda: now[0])
    for _ in range(10):   # 10 updates over 9 s: lines at 5 s only (the first at >= 5 s after the start)
        now[0] += 1.0
        bar.update(10) if now[0] < 10 else bar.set(100)
    bar.close()           # and once at the end
    lines = out.getvalue().splitlines()
    assert lines == ["labeling: 50/100 image (50%), 10.0 image/s, elapsed 5s, ETA 5s",
                     "labeling: 100/100 image (100%), 10.0 image/s, elapsed 10s, ETA 0s"]
    with silent("x", 10) as quiet:
        quiet.update(5)   # the --quiet stand-in takes the same calls


def test_utilization_follows_the_process_tree_and_keeps_exited_workers(tmp_path):
    import shutil

    from orchestrator.sweep.utilization import _TICKS, UsageWindow, core_utilization, parse_stat, tree_cpu_times

    def stat(pid, ppid, utime, name="python", start=7):
        (tmp_path / str(pid)).mkdir(exist_ok=True)
        fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), "0", "0", "0"] + ["0"] * 4 + [str(start)] + ["0"] * 20
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) " + " ".join(fields))

    (tmp_path / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    stat(10, 1, 100)                       # the driver
    stat(11, 10, 300, "ray::IDLE) x")      # the raylet (a name with ') ' in it still parses)
    stat(13, 1, 999)                       # another user's process: not ours
    assert parse_stat((tmp_path / "11" / "stat").read_text()) == (10, 7, 300 / _TICKS)
    window = UsageWindow(cores=2, every=3600, root=10, proc=str(tmp_path)).start()
    stat(10, 1, 150)
    stat(12, 11, 200)                      # a Train worker starts during the phase ...
    window.sample()
    shutil.rmtree(tmp_path / "12")         # ... and exits: its 200 ticks still count
    stat(13, 1, 5000)
    window._stop.set()
    assert set(tree_cpu_times(10, str(tmp_path))) == {(10, 7), (11, 7)}
    assert window.busy_seconds() == pytest.approx(250 / _TICKS)
    assert core_utilization(90.0, 2, 50.0) == 0.9 and core_utilization(1.0, 0, 1.0) == 0.0


def test_utilization_window_sees_this_process_burn_cpu():
    from orchestrator.sweep.utilization import UsageWindow

    window = UsageWindow(cores=1, every=0.1).start()
    end = time.process_time() + 0.3
    while time.process_time() < end:   # one core busy for 0.3 s of CPU time
        pass
    figures = window.finish()
    assert figures["cost.busy_core_seconds"] >= 0.2 and 0 < figures["cost.core_utilization"] <= 1.5
    assert set(figures) >= {"cost.core_utilization", "cost.machine_core_utilization", "cost.trial_phase_seconds"}


def test_tally_gathers_manifest_and_diagnostics_in_one_pass(tmp_path):
    from PIL import Image

    from orchestrator.core.masks import encode_png
    from orchestrator.labels.tally import Tally

    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 1
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    ids = [f"img_{i}" for i in range(50)]
    tally = Tally.for_items(["background", "disk"], 2, ids[::-1], {"img_3": str(tmp_path / "m.png")})
    assert tally.overlay_candidates[:2] == ["img_0", "img_1"] and set(tally.gt_masks) == {"img_3"}
    label = encode_png(mask)
    batch = {"image_id": np.array(ids[:4], object), "node": np.array(["n1"] * 4, object),
             "error": np.array(["", "broken", "", ""], object), "label": np.array([label] * 4, object),
             "confidence": np.array([label] * 4, object), "class_pixels": [np.array([8, 8])] * 4,
             "conf_hist": [np.array([0, 16])] * 4}
    tally.add(batch)
    fields = tally.manifest_fields()
    assert (fields["images"], fields["labeled"], fields["rejected"]) == (4, 3, 1)
    assert fields["rejected_images"] == [{"image_id": "img_1", "error": "broken"}]
    assert fields["diagnostics"]["class_pixel_share"] == {"background": 0.5, "disk": 0.5}
    assert fields["diagnostics"]["confidence_histogram"] == [0, 48] and fields["teacher_nodes"] == ["n1"]
    assert tally.overlay_ids() == ["img_0", "img_2", "img_3"]           # the rejected one is left out
    assert tally.score.images == 1 and tally.score.compute(["background", "disk"])["miou"] == 100.0


def test_teacher_fit_takes_the_node_on_cpu_and_keeps_its_share_on_gpu():
    from orchestrator.core.long_task import job_threads

    assert job_threads(1, 0, [0.0, 2.0]) == 2       # the largest node (a 0-CPU head beside it)
    assert job_threads(1, 1, [8.0]) == 1             # on a GPU: resources.cpus_per_teacher
    assert job_threads(1, 0, []) == 1


def test_only_the_harmless_ray_line_is_skipped():
    from orchestrator.runtime import HARMLESS_RAY_LINES, quiet_harmless_ray_lines

    env = {}
    quiet_harmless_ray_lines(env)
    skip = re.compile(env["RAY_DEDUP_LOGS_SKIP_REGEX"])
    assert skip.search("[2026-12-01 19:34:47,261 E 2295 2295] core_worker.cc:2465: Actor with class name: "
                       "'MapWorker(ReadRange->MapBatches(A))' and ID: 'dfd1' has constructor arguments in the "
                       "object store and max_restarts > 0. If the arguments in the object store go out of scope")
    assert not skip.search("[2026-12-01 19:34:47,261 E 2295 2295] core_worker.cc:1: Failed to register actor.")
    mine = {"RAY_DEDUP_LOGS_SKIP_REGEX": "mine"}
    quiet_harmless_ray_lines(mine)
    assert mine["RAY_DEDUP_LOGS_SKIP_REGEX"] == "mine" and HARMLESS_RAY_LINES


def test_stderr_is_held_and_only_the_harmless_line_dropped(capfd):
    import sys

    from orchestrator.core.console import HARMLESS_RAY_LINES, stderr_without

    with pytest.raises(RuntimeError):
        with stderr_without(HARMLESS_RAY_LINES):
            os.write(2, b"[E core_worker.cc] Actor 'MapWorker' has constructor arguments in the object store and "
                        b"max_restarts > 0. If ...\n")          # what Ray's C++ core writes, straight to fd 2
            print("a real error", file=sys.stderr)
            raise RuntimeError("the block failed")
    err = capfd.readouterr().err
    assert err == "a real error\n"                              # written out after the block, even on failure


def test_a_private_ray_runs_its_workers_at_our_priority_unless_told_otherwise():
    from orchestrator.runtime import local_worker_priority

    env = {}
    local_worker_priority(env)
    assert env == {"RAY_worker_niceness": "0"}
    mine = {"RAY_worker_niceness": "19"}
    local_worker_priority(mine)
    assert mine == {"RAY_worker_niceness": "19"}
