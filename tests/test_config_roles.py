"""Config roles: every key declares them, every list of keys other modules act on is computed from them, and
docs/config.md is generated from them.

The pinned literals below are copies of the lists as they were written by hand before the roles existed: a role
given to a new key changes a list on purpose (edit the pin with it); a role lost or mistyped fails here. LABEL_KEYS
is pinned with its order, as that order is part of every label cache key.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core import config_roles as roles
from orchestrator.core.config import (CHOICES, CONFIG_KEYS, KEY_ROLES, ExperimentConfig, build_config, flatten,
                                      key_prefixes, keys_with, role_problems, setting)

# ---- pins: the hand-written lists these are derived from ------------------------------------------------------

OLD_LABEL_KEYS = (
    "data.dataset", "data.root", "data.seed", "data.image_size", "data.num_train", "data.num_val", "data.num_test",
    "data.num_ood", "data.num_source", "data.distractor_share", "data.style_shift", "data.id_class_prior",
    "data.id_distractor_share",
    "ood.root",
    "teacher.kind", "teacher.pretrained", "teacher.arch", "teacher.templates", "teacher.resolution",
    "teacher.sliding_window", "teacher.fit_steps", "teacher.label_noise",
)
OLD_ENCODER_KEYS = ("data.dataset", "data.root", "data.seed", "data.image_size", "data.num_train", "data.num_val",
                    "data.num_test", "data.num_ood", "data.num_source", "data.distractor_share", "data.style_shift",
                    "data.id_class_prior", "data.id_distractor_share", "model.arch", "model.width", "model.pretrain",
                    "model.pretrain_steps", "model.pretrained_backbone")
OLD_RESUMABLE_CHANGES = ("train.epochs", "train.max_failures", "train.num_workers", "train.overlay_images",
                         "train.loader_workers", "train.cudnn_benchmark", "train.channels_last", "resources.")
OLD_NEEDS_LABELS = ("train.method", "ood.label_source")
OLD_TEACHER_KEYS = {k for k in CONFIG_KEYS if k.startswith("teacher.") or k == "ood.teacher_thresh"}
OLD_OOD_KEYS = {k for k in CONFIG_KEYS if k.startswith(("ood.", "teacher."))}
OLD_TEACHER_FIT = {"teacher.fit_steps", "teacher.templates", "data.seed", "teacher.kind"}   # kind: the file's name


def test_every_key_declares_one_purpose_known_roles_and_help():
    assert role_problems() == []
    assert set(KEY_ROLES) == set(CONFIG_KEYS)


def test_a_field_without_roles_fails():
    @dataclasses.dataclass
    class Section:
        plain: int = 0
        declared: int = setting(0, (roles.EXPERIMENT,), "a key")
        two_purposes: int = setting(0, (roles.EXPERIMENT, roles.RESOURCES), "a key")
        typo: int = setting(0, (roles.EXPERIMENT, "lables"), "a key")

    problems = role_problems({f"x.{f.name}": f for f in dataclasses.fields(Section)})
    assert [p.split(":")[0] for p in problems] == ["x.plain", "x.two_purposes", "x.typo"]
    assert "no roles" in problems[0] and "lables" in problems[2]


def test_every_role_is_documented_and_unknown_roles_are_refused():
    assert set(roles.ROLE_HELP) == set(roles.PURPOSES) | set(roles.EFFECTS)
    with pytest.raises(ValueError, match="unknown config role 'lables'"):
        keys_with("lables")


def test_label_keys_are_todays_in_todays_order():
    from orchestrator.labels.job import LABEL_KEYS, LabelRequest

    assert LABEL_KEYS == OLD_LABEL_KEYS
    assert tuple(k for k, _ in LabelRequest.from_config(build_config()).values) == OLD_LABEL_KEYS


def test_encoder_keys_are_todays():
    from orchestrator.students.encoder import ENCODER_KEYS

    # the order only orders an EncoderRequest's values within one process; no cache key reads it
    assert sorted(ENCODER_KEYS) == sorted(OLD_ENCODER_KEYS) and len(ENCODER_KEYS) == len(OLD_ENCODER_KEYS)


def test_resumable_changes_accept_and_refuse_what_they_did():
    from trainables.run_state import RESUMABLE_CHANGES, check_resumable

    assert set(RESUMABLE_CHANGES) == set(OLD_RESUMABLE_CHANGES)
    for key in [*CONFIG_KEYS, "resources.a_key_older_code_wrote", "train.a_key_older_code_wrote"]:
        assert key.startswith(RESUMABLE_CHANGES) == key.startswith(OLD_RESUMABLE_CHANGES), key
    check_resumable({"train.epochs": 6, "resources.trial_cpus": 0.0}, {"train.epochs": 9, "resources.trial_cpus": 1.0})
    with pytest.raises(ValueError, match=r"other settings \(train.lr\)"):
        check_resumable({"train.lr": 0.1}, {"train.lr": 0.2})


def test_resumable_prefixes_catch_no_other_key():
    """check_resumable matches with str.startswith: a resumable key must not be the prefix of one that is not."""
    for prefix in key_prefixes(roles.RESUMABLE):
        caught = {k for k in CONFIG_KEYS if k.startswith(prefix)}
        assert caught <= set(keys_with(roles.RESUMABLE)), prefix


def test_keys_that_decide_labeling_are_todays():
    from orchestrator.sweep.plan import _NEEDS_LABELS

    assert set(_NEEDS_LABELS) == set(OLD_NEEDS_LABELS)
    assert set(keys_with(roles.DECIDES_LABELS)) == {*OLD_NEEDS_LABELS, "ood.ratio"}


def test_report_inert_sets_are_todays():
    from orchestrator.tracking.report import INERT_WITHOUT_OOD, INERT_WITHOUT_TEACHER_LABELS
    from orchestrator.tracking.report_plots import TEACHER_KEYS

    assert INERT_WITHOUT_OOD == OLD_OOD_KEYS == {
        "ood.root", "ood.ratio", "ood.num_images", "ood.label_source", "ood.teacher_thresh", "teacher.kind",
        "teacher.pretrained", "teacher.arch", "teacher.templates", "teacher.resolution", "teacher.sliding_window",
        "teacher.batch_size", "teacher.fit_steps", "teacher.label_noise"}
    assert INERT_WITHOUT_TEACHER_LABELS == TEACHER_KEYS == OLD_TEACHER_KEYS == {
        "ood.teacher_thresh", "teacher.kind", "teacher.pretrained", "teacher.arch", "teacher.templates",
        "teacher.resolution", "teacher.sliding_window", "teacher.batch_size", "teacher.fit_steps",
        "teacher.label_noise"}


def _old_effective_params(params: dict[str, Any]) -> dict[str, Any]:
    """effective_params as it was written before the roles (report.py)."""
    from orchestrator.tracking.report import ADDED_KEYS, INERT

    params = {**ADDED_KEYS, **params}
    if params.get("train.method") in ("supervised", "unimatch"):
        return {k: (INERT if k.startswith(("ood.", "teacher.")) else v) for k, v in params.items()}
    if params.get("ood.label_source", "teacher") != "teacher":
        return {k: (INERT if k.startswith("teacher.") or k == "ood.teacher_thresh" else v) for k, v in params.items()}
    return dict(params)


@pytest.mark.parametrize("method", ["supervised", "unimatch", "semiovs"])
@pytest.mark.parametrize("source", ["teacher", "self", "none"])
def test_effective_params_blank_what_they_did(method, source):
    from orchestrator.tracking.report import effective_params

    params = {k: str(v) for k, v in flatten(build_config()).items()}
    params.update({"train.method": method, "ood.label_source": source})
    assert effective_params(params) == _old_effective_params(params)
    del params["teacher.label_noise"]   # a run logged before the key existed
    assert effective_params(params) == _old_effective_params(params)


# ---- roles checked against the code that acts on the keys --------------------------------------------------------

def _alternatives(key: str, value: Any) -> list[Any]:
    """Other values for `key`: every other choice, or a few of its type (set without validation)."""
    if key in CHOICES:
        return [c for c in CHOICES[key] if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [type(value)(0) if value else type(value)(1), value * 2 + 1]
    return [v for v in ("alt", "") if v != value]


def _with(cfg: ExperimentConfig, key: str, value: Any) -> ExperimentConfig:
    changed = copy.deepcopy(cfg)
    *section, name = key.split(".")
    setattr(getattr(changed, section[0]) if section else changed, name, value)
    return changed


def _variants(cfg: ExperimentConfig):
    flat = flatten(cfg)
    for key in CONFIG_KEYS:
        for value in _alternatives(key, flat[key]):
            yield key, _with(cfg, key, value)


def test_the_fitted_teacher_reads_exactly_the_teacher_fit_keys(tmp_path: Path):
    from orchestrator.teachers.fit_task import fitted_teacher_path

    base = build_config()
    data_root = tmp_path / "data"   # fixed: the source corpus the dataset keys choose is not what this checks
    reference = fitted_teacher_path(base, tmp_path, data_root)
    read = {key for key, cfg in _variants(base) if fitted_teacher_path(cfg, tmp_path, data_root) != reference}
    assert read == set(keys_with(roles.TEACHER_FIT)) == OLD_TEACHER_FIT


@pytest.mark.parametrize("overrides", [{}, {"ood.label_source": "self"}, {"train.method": "unimatch"}])
def test_only_decides_labels_keys_decide_the_ood_stream(overrides):
    base = build_config(overrides)
    decision = (base.uses_ood, base.uses_teacher_labels)
    changed = {key for key, cfg in _variants(base) if (cfg.uses_ood, cfg.uses_teacher_labels) != decision}
    assert changed <= set(keys_with(roles.DECIDES_LABELS))
    if not overrides:   # from a SemiOVS run on teacher labels, each of them can turn the labels off
        assert changed == set(keys_with(roles.DECIDES_LABELS))


def test_roles_agree_with_each_other():
    def having(role: str) -> set[str]:
        return set(keys_with(role))

    assert having(roles.TEACHER_FIT) <= having(roles.LABELS)   # a refitted teacher labels again
    assert not having(roles.RESUMABLE) & (having(roles.LABELS) | having(roles.ENCODER))
    assert having(roles.INERT_WITHOUT_TEACHER_LABELS) <= having(roles.INERT_WITHOUT_OOD)
    assert not having(roles.INERT_WITHOUT_TEACHER_LABELS) & having(roles.DECIDES_LABELS)
    # every data.* key that changes the labels changes the encoder's dataset too, and the other way round
    assert {k for k in having(roles.LABELS) if k.startswith("data.")} == \
           {k for k in having(roles.ENCODER) if k.startswith("data.")}


# ---- docs/config.md ---------------------------------------------------------------------------------------------

def test_docs_config_md_is_what_the_code_generates():
    from orchestrator.core.config_doc import COMMAND, DOC_PATH, render

    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.is_file() else ""
    assert committed == render(), f"docs/config.md is out of date with orchestrator/core/config.py. Fix: {COMMAND}"


def test_docs_config_md_lists_every_key_with_its_default_and_roles():
    from orchestrator.core.config_doc import render

    text = render()
    flat = flatten(build_config())
    for key in CONFIG_KEYS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert all(f"`{r}`" in row for r in KEY_ROLES[key]), key
        assert str(flat[key]).lower() in row.lower() or (flat[key] == "" and '`""`' in row), key
    for role in roles.ROLES:
        assert f"| `{role}` |" in text
