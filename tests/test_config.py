"""Config: defaults, overrides, and the error text a user sees for bad keys and values."""
import pytest

from orchestrator.core.config import CONFIG_KEYS, build_config, coerce_value, flatten
from orchestrator.core.errors import ConfigError, UserError


def test_defaults_round_trip_through_flat_form():
    cfg = build_config()
    flat = flatten(cfg)
    assert set(flat) == set(CONFIG_KEYS)
    assert build_config(flat) == cfg
    assert flat["train.conf_thresh"] == 0.95 and flat["ood.ratio"] == 0.5


def test_overrides_are_coerced_to_the_field_type():
    cfg = build_config({"data.split": 32, "train.lr": 1, "ood.ratio": 0.25})
    assert cfg.data.split == "32" and isinstance(cfg.train.lr, float) and cfg.ood.ratio == 0.25


def test_unknown_key_names_the_source_and_suggests_the_closest_key():
    with pytest.raises(ConfigError, match=r"--set: unknown config key 'ood.ratoi'. Fix: did you mean 'ood.ratio'"):
        build_config({"ood.ratoi": 0.5}, "--set")


def test_out_of_range_value_names_key_and_range():
    with pytest.raises(ConfigError, match=r"'ood.ratio': 1.5 is out of range. Fix: use a value in \[0.0, 1.0\]"):
        build_config({"ood.ratio": 1.5})


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError, match=r"'train.epochs' expects int, got 'many'"):
        build_config({"train.epochs": "many"})
    with pytest.raises(ConfigError, match=r"expects float, got True"):
        coerce_value("train.lr", True, "x")


def test_bad_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'train.method': 'fixmatch' is not a valid value. "
                                          r"Fix: use one of supervised, unimatch, semiovs"):
        build_config({"train.method": "fixmatch"})


def test_real_dataset_needs_a_root():
    with pytest.raises(ConfigError, match=r"'data.root': is required for data.dataset=pascal"):
        build_config({"data.dataset": "pascal"})


def test_config_errors_are_user_errors_with_exit_code_2():
    assert issubclass(ConfigError, UserError) and ConfigError.exit_code == 2


def test_uses_teacher_labels_decision():
    assert build_config({"train.method": "semiovs"}).uses_teacher_labels
    assert not build_config({"train.method": "unimatch"}).uses_teacher_labels
    assert not build_config({"ood.ratio": 0.0}).uses_teacher_labels
    assert not build_config({"ood.label_source": "self"}).uses_teacher_labels
    assert build_config({"ood.label_source": "self"}).uses_ood
