"""Pure sweep decisions: which labeling runs a sweep needs, how many trials fit, the results table."""
import math

import pytest

from orchestrator.core.config import build_config, flatten
from orchestrator.core.errors import SpaceError
from orchestrator.sweep.results import TrialRow, format_csv, format_markdown, format_text, trial_status
from orchestrator.sweep.space import parse_space, resolve_base
from orchestrator.sweep.plan import (driver_resources, labeling_configs, max_concurrent_trials, per_trial_cpus,
                                     trial_packing)


def plan(parameters, fixed=None):
    space = parse_space({"fixed": fixed or {}, "parameters": parameters}, "s.yaml")
    return labeling_configs(space, resolve_base(space, {}))


def test_threshold_and_ratio_sweeps_label_once():
    assert len(plan({"ood.ratio": {"grid": [0, 0.25, 0.5]}, "ood.teacher_thresh": {"uniform": [0, 0.9]},
                     "train.conf_thresh": {"grid": [0.9, 0.95]}})) == 1


def test_each_teacher_setting_is_labeled_once():
    configs = plan({"teacher.templates": {"grid": ["single", "imagenet80"]}, "seed": {"grid": [0, 1, 2]}})
    assert sorted(c["teacher.templates"] for c in configs) == ["imagenet80", "single"]


def test_no_teacher_needed_no_labeling():
    assert plan({"train.method": {"grid": ["supervised", "unimatch"]}}) == []
    assert plan({"ood.ratio": {"grid": [0.0]}}) == []
    assert plan({"seed": {"grid": [0, 1]}}, fixed={"ood.label_source": "self"}) == []


def test_mixed_methods_label_only_for_semiovs():
    configs = plan({"train.method": {"grid": ["unimatch", "semiovs"]}})
    assert [c["train.method"] for c in configs] == ["semiovs"]


def test_continuous_sweep_of_a_teacher_key_is_refused():
    with pytest.raises(SpaceError, match=r"'parameters.teacher.resolution': a randint distribution would need "
                                         r"a new labeling run per sampled value. Fix: sweep it with grid"):
        plan({"teacher.resolution": {"randint": [32, 96]}})


def test_concurrency_from_cpus():
    space = parse_space({}, "s.yaml")
    base = flatten(build_config())
    assert per_trial_cpus(base) == 1.0          # the Tune function holds no CPU: it only waits on its trainer
    assert max_concurrent_trials(space, base, 2) == 1   # a one-trial space never runs more than one
    grid = parse_space({"parameters": {"ood.ratio": {"grid": [0, 0.25, 0.5, 0.75]}}}, "s.yaml")
    assert max_concurrent_trials(grid, base, 2) == 2 and max_concurrent_trials(grid, base, 3) == 3
    assert max_concurrent_trials(grid, base, 8) == 4
    local = flatten(build_config({"train.num_workers": 0}))
    assert per_trial_cpus(local) == 1.0 and max_concurrent_trials(grid, local, 2) == 2
    assert max_concurrent_trials(parse_space({"max_concurrent_trials": 3, "parameters": {
        "ood.ratio": {"grid": [0, 0.25, 0.5, 0.75]}}}, "s.yaml"), base, 2) == 3


def test_packing_says_why_and_counts_gpus():
    grid = parse_space({"parameters": {"ood.ratio": {"grid": [0, 0.25, 0.5, 0.75]}}}, "s.yaml")
    packing = trial_packing(grid, flatten(build_config()), 2)
    assert packing.concurrent == 2
    assert packing.reason == ("2 CPU(s) ÷ 1 CPU per trial (1 Train worker(s) × 1 CPU + 0 CPU for its Tune "
                              "function)")
    gpu = flatten(build_config({"resources.gpus_per_worker": 1, "train.num_workers": 2}))
    packing = trial_packing(grid, gpu, 40, 4)   # CPUs would hold 20 trials; 4 GPUs hold 2 two-GPU trials
    assert packing.concurrent == 2 and "4 GPU(s) ÷ 2 GPU per trial" in packing.reason
    assert "0 CPU for its Tune function" in packing.reason


def test_trial_function_reserves_memory_not_cpu():
    resources = driver_resources(flatten(build_config()))
    assert resources["CPU"] == 0 and resources["memory"] > 0    # Tune refuses an empty resource request
    local = driver_resources(flatten(build_config({"train.num_workers": 0})))
    assert local["CPU"] == 1                                    # local mode trains in the Tune function


def test_trial_drivers_are_capped_by_ray_memory_on_a_head_without_cpus():
    """A head offering memory but no CPUs took every trial's driver (the Tune function, Train's controller and its
    helpers hold no CPU); the driver's memory reservation caps them, and packing counts it."""
    from orchestrator.core.errors import SpaceError

    grid = parse_space({"parameters": {"seed": {"grid": list(range(40))}}}, "s.yaml")
    base = flatten(build_config())
    gib = 1024 ** 3
    assert driver_resources(base)["memory"] == 1400 * 1024 ** 2
    packing = trial_packing(grid, base, 32, 0, cluster_memory=8 * gib)   # CPUs hold 32; 8 GiB holds 5 drivers
    assert packing.concurrent == 5 and "8.0 GiB of Ray memory ÷ 1.37 GiB per trial driver" in packing.reason
    assert trial_packing(grid, base, 2, 0, cluster_memory=8 * gib).concurrent == 2   # the CPUs bind first
    with pytest.raises(SpaceError, match="resources.trial_driver_mib=1000"):
        trial_packing(grid, base, 2, 0, cluster_memory=1000 * 1024 ** 2)
    resumed = {k: v for k, v in base.items() if k != "resources.trial_driver_mib"}   # a sweep from before the key
    assert driver_resources(resumed)["memory"] == 256 * 1024 ** 2


def test_results_table_formats():
    rows = [TrialRow("t1", {"ood.ratio": 0.5}, 31.234, 6, "done", 61.4),
            TrialRow("t2", {"ood.ratio": 0.0}, float("nan"), 0, "error")]
    text = format_text(rows, ["ood.ratio"], "val_miou")
    assert "best val_miou" in text and "31.23" in text and "n/a" in text
    assert format_markdown(rows, ["ood.ratio"], "val_miou").splitlines()[2] == "| t1 | 0.5 | 31.23 | 6 | done | 61 |"
    assert format_csv(rows, ["ood.ratio"], "val_miou").splitlines()[1] == "t1,0.5,31.234,6,done,61.4"
    assert trial_status(False, 2, 6) == "stopped early" and trial_status(True, 6, 6) == "error"
    assert math.isnan(rows[1].best)


def test_label_split_space_labels_once():
    """Sweeping the labeled split and the method never changes the teacher's labels: one key, not five."""
    from pathlib import Path

    from orchestrator.sweep.space import load_space

    space = load_space(Path(__file__).parent.parent / "search_spaces" / "label_split.yaml")
    assert len(labeling_configs(space, resolve_base(space, {}))) == 1


def test_label_keys_are_config_keys_and_exclude_read_time_knobs():
    from orchestrator.core.config import CONFIG_KEYS
    from orchestrator.labels.job import LABEL_KEYS

    assert set(LABEL_KEYS) <= set(CONFIG_KEYS)
    assert not {"data.split", "ood.ratio", "ood.teacher_thresh", "ood.num_images", "teacher.batch_size"} & set(LABEL_KEYS)
