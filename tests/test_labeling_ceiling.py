"""benchmarks/labeling_ceiling.py at a small size, so that its code cannot rot unnoticed.

The store part (no Ray): a simulated label store of 20,000 rows written by the store's own writer, read through a
trial's real path; the reader must find exactly the subset's rows, each image its own. The absorption part (Ray
Data, the stand-in teacher) is end-to-end.
"""
from __future__ import annotations

import json

import pytest

from benchmarks import labeling_ceiling as bench

ROWS, SUBSET = 20_000, 1_000


def test_a_trial_reads_exactly_its_subset_of_a_simulated_store(tmp_path):
    from orchestrator.data.mixing import subsample_corpus

    cfg = bench.store_config(tmp_path, ROWS, SUBSET)
    built = bench.build_store(cfg, ROWS)
    entry = bench.store_entry(cfg)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["images"] == manifest["labeled"] == ROWS and manifest["rejected"] == 0
    assert len(manifest["shards"]) == built["shards"] == 20   # 1,024-row shards, as the writer gathers them

    seconds, plan, sampler, batch = bench.first_ood_batch(cfg, entry)
    ids = [f"images/img_{i:07d}.jpg" for i in range(ROWS)]
    subset = subsample_corpus(ids, SUBSET, cfg.seed)
    assert [image_id for image_id, _ in plan.ood] == subset                  # the seeded subset, in corpus order
    assert all(path == str(tmp_path / f"store{ROWS}" / "corpus" / image_id) for image_id, path in plan.ood)
    row = {image_id: i for i, image_id in enumerate(ids)}
    for image_id in subset:                                                 # each image's row is its own
        label_png, conf_png = sampler.ood_labels.table[image_id]
        assert bench.row_of(label_png) == bench.row_of(conf_png) == row[image_id]
        assert sampler.ood_labels.get(image_id).shape == (bench.MASK_PX, bench.MASK_PX)
    assert batch["o_w"].shape[0] == cfg.train.batch_size and batch["y_o"].max() < len(plan.vocabulary.names)
    stages = {"plan", "checksums", "parquet_read", "label_table", "ood_batch"}
    assert set(seconds) == {"total", "cpu", *stages} and set(seconds["cpu"]) == stages

    figures = bench.measure_store(tmp_path, ROWS, SUBSET)   # what the benchmark's fresh process runs
    assert figures["ood_batch_images"] == cfg.train.batch_size and figures["first_ood_batch_s"] > 0


@pytest.mark.e2e
def test_the_driver_absorbs_a_stand_in_teachers_labels(ray_session, tmp_path):
    # the actors import benchmarks.labeling_ceiling by name: Ray puts the driver's working folder (the repository,
    # where pytest runs) on its workers' sys.path
    for kind in (bench.FREE, bench.TEXTURED):
        figures = bench.absorb(tmp_path, 192, 64, kind, actors=1, batch_size=64)
        assert figures["images"] == 192 and figures["teacher"] == kind.rsplit(":", 1)[1]
        assert figures["driver_cpu_s"] > 0 and figures["driver_cpu_s_by_phase"]["streaming"] >= 0
        assert set(figures["main_thread_cpu_us_per_image"]) >= {"iterator", "tally", "write_shard"}
    assert figures["parquet_bytes_per_row"] > 1000   # textured masks: about a real teacher's PNG sizes
