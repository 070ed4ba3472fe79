"""The roles a config key plays: the one place that says what each role means.

Every field of orchestrator/core/config.py declares its roles next to its default (`setting(default, roles, help)`),
and every list of keys that other modules act on is computed from them (`config.keys_with(role)`), so a new key
is in the right lists the moment it is declared. A key has exactly one purpose role, saying what it is for, and
any number of effect roles, saying what changing it does. `python -m orchestrator.core.config_doc` writes
docs/config.md from the fields, with this vocabulary on top.
"""
from __future__ import annotations

# ---- purpose: what the key is for (exactly one per key) -------------------------------------------------------
EXPERIMENT = "experiment"
RESOURCES = "resources"
FAULT_TOLERANCE = "fault_tolerance"
DIAGNOSTICS = "diagnostics"

# ---- effects: what changing the key does (any number per key) ---------------------------------------------------
LABELS = "labels"
ENCODER = "encoder"
TEACHER_FIT = "teacher_fit"
DECIDES_LABELS = "decides_labels"
RESUMABLE = "resumable"
INERT_WITHOUT_OOD = "inert_without_ood"
INERT_WITHOUT_TEACHER_LABELS = "inert_without_teacher_labels"

PURPOSES: tuple[str, ...] = (EXPERIMENT, RESOURCES, FAULT_TOLERANCE, DIAGNOSTICS)
EFFECTS: tuple[str, ...] = (LABELS, ENCODER, TEACHER_FIT, DECIDES_LABELS, RESUMABLE, INERT_WITHOUT_OOD,
                            INERT_WITHOUT_TEACHER_LABELS)

# role → (what it means, what is computed from it). docs/config.md shows this table.
ROLE_HELP: dict[str, tuple[str, str]] = {
    EXPERIMENT: ("part of what a run measures (data, teacher, student, training): a new value trains another "
                 "student, with another score", ""),
    RESOURCES: ("how much compute a run takes, where and how fast it runs; not what it computes", ""),
    FAULT_TOLERANCE: ("which failures a run survives (worker and trial restarts, unreadable files)", ""),
    DIAGNOSTICS: ("what a run logs beside its score", ""),
    LABELS: ("part of the OOD label cache key: a new value labels the OOD corpus again (every `data.*` setting "
             "that changes which images exist belongs here, or a stale label set would be reused)",
             "`LABEL_KEYS` (orchestrator/labels/job.py), in field order"),
    ENCODER: ("part of the pretrained student encoder's request: a new value pretrains another encoder (when "
              "`model.pretrain` asks for one)", "`ENCODER_KEYS` (orchestrator/students/encoder.py)"),
    TEACHER_FIT: ("read by the fitted teacher's cache key: a new value fits the teacher again, for a kind fitted on "
                  "the source corpus such as `textseg` (beside the source corpus itself, which the dataset keys "
                  "choose)",
                  "checked against `fitted_teacher_path` (orchestrator/teachers/fit_task.py) by "
                  "tests/test_config_roles.py"),
    DECIDES_LABELS: ("decides whether a trial trains on teacher labels at all: the only keys "
                     "`ExperimentConfig.uses_teacher_labels` and `uses_ood` read",
                     "`_NEEDS_LABELS` (orchestrator/sweep/plan.py; `ood.ratio` is planned by its largest swept "
                     "value instead)"),
    RESUMABLE: ("a resumed run may change it; a checkpoint made with any other key's value is refused",
                "`RESUMABLE_CHANGES` (trainables/run_state.py; a section whose every key is resumable is given as "
                "its prefix)"),
    INERT_WITHOUT_OOD: ("does nothing without an OOD stream (`train.method` supervised or unimatch): the report "
                        "shows – for it there", "`INERT_WITHOUT_OOD` (orchestrator/tracking/report.py)"),
    INERT_WITHOUT_TEACHER_LABELS: ("does nothing unless the teacher labels the OOD stream (`ood.label_source` "
                                   "teacher): the report shows – for it otherwise, and its teacher-quality plot "
                                   "treats these as the teacher's keys",
                                   "`INERT_WITHOUT_TEACHER_LABELS` (orchestrator/tracking/report.py), "
                                   "`TEACHER_KEYS` (orchestrator/tracking/report_plots.py)"),
}
ROLES: tuple[str, ...] = PURPOSES + EFFECTS
assert set(ROLE_HELP) == set(ROLES)
