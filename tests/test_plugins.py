"""Plug-in teachers and students (docs/extending.md): a module outside the package, written at test time, named by
its import path in teacher.kind / model.arch. The registry, the protocol checks and their error texts (through the
CLI, in-process), the label cache key, a plug-in fitted on the source corpus, and the shipped smoke sweep run by a
user in a subprocess with both plug-ins."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.cli import main
from orchestrator.core.config import STUDENT_ARCHS, TEACHER_KINDS, ModelConfig, allowed_values_help, build_config
from orchestrator.core.errors import ConfigError, UserError
from orchestrator.core.vocab import ClassConcepts, Vocabulary
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
VOCAB = Vocabulary((ClassConcepts("background"), ClassConcepts("disk", ("circle",)), ClassConcepts("square")),
                   background_concepts=("grass",))

# What a user writes: a module of their own, importable by its name (here: tmp_path on sys.path / PYTHONPATH).
PLUGINS = textwrap.dedent('''
    """Plug-ins for tests/test_plugins.py: a nearest-colour teacher and a tiny conv-net student."""
    import json

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn


    class RuleTeacher:
        """Background where a pixel is near the image's border colour, else an object class chosen by the pixel's
        dominant channel. Needs no weights. Returns int64 ids and float64 confidence (the orchestrator converts)."""

        pretrained_kind = "none"

        def __init__(self, spec, vocabulary):
            self.num_classes = vocabulary.num_classes
            self.spec = spec

        def predict(self, images):
            x = images.astype(np.float32)
            border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
            background = np.median(border, axis=1)[:, None, None, :]
            objects = np.linalg.norm(x - background, axis=-1) > 40
            ids = 1 + x.argmax(-1) % max(1, self.num_classes - 1)
            labels = np.where(objects, np.minimum(ids, self.num_classes - 1), 0).astype(np.int64)
            return labels, np.where(objects, 0.6, 0.9)


    class Outer:
        class Inner(RuleTeacher):   # a nested class: my_plugins:Outer.Inner
            pass


    class FittedTeacher(RuleTeacher):
        """Fitted on the source corpus when teacher.pretrained is empty: each class's mean colour."""

        pretrained_kind = "file"
        fits_on_source = True

        @classmethod
        def fit_weights(cls, images, masks, vocabulary, out_path, *, steps, seed, templates, on_step=None):
            means = [images[masks == k].mean(0).tolist() if (masks == k).any() else [0.0, 0.0, 0.0]
                     for k in range(vocabulary.num_classes)]
            with open(out_path, "w") as f:
                json.dump({"means": means, "steps": steps}, f)
            if on_step:
                on_step(steps)


    class TinyStudent(nn.Module):
        """Two convolutions and a 1x1 classifier. No `backbone`: one parameter group at the base lr."""

        def __init__(self, num_classes, config):
            super().__init__()
            w = config.width
            self.encoder = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1), nn.ReLU(),
                                         nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
            self.classifier = nn.Conv2d(w, num_classes, 1)
            self.fp_dropout = config.fp_dropout
            self.backbone_file = config.pretrained_backbone

        def forward(self, x, need_fp=False):
            feats = self.encoder(x)
            if need_fp:   # clean and perturbed features through one classifier pass
                feats = torch.cat([feats, F.dropout2d(feats, self.fp_dropout, training=True)])
            logits = F.interpolate(self.classifier(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
            return logits.chunk(2) if need_fp else logits


    # ---- classes that do not follow the protocols -----------------------------------------------------------

    class NoPredict:
        def __init__(self, spec, vocabulary):
            pass


    class WrongTeacherInit:
        def __init__(self):
            pass

        def predict(self, images):
            return images


    class BadTrait(RuleTeacher):
        pretrained_kind = "url"


    class FitsWithoutHook(RuleTeacher):
        fits_on_source = True


    class NotAModule:
        def __init__(self, num_classes, config):
            pass

        def forward(self, x, need_fp=False):
            return x


    class NoNeedFp(nn.Module):
        def __init__(self, num_classes, config):
            super().__init__()

        def forward(self, x):
            return x


    def not_a_class(spec, vocabulary):
        return None
''')


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """my_plugins.py in tmp_path, importable in this process; forgotten again afterwards."""
    path = tmp_path / "my_plugins.py"
    path.write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)   # a command that gets far would write its default folders here, not in the repo
    for name in ("my_plugins", "broken_plugins"):
        sys.modules.pop(name, None)
    yield path
    for name in ("my_plugins", "broken_plugins"):
        sys.modules.pop(name, None)


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must refuse with exit code 2 and one `error:` line, which is returned."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---- the registries ---------------------------------------------------------------------------------------------

def test_registries_hold_the_configs_names_and_their_classes_follow_the_protocols():
    from orchestrator.core.plugins import load_student_class, load_teacher_class
    from orchestrator.teachers.registry import BUILTIN_TEACHERS, teacher_traits
    from trainables.models import STUDENTS

    assert tuple(BUILTIN_TEACHERS) == TEACHER_KINDS and tuple(STUDENTS) == STUDENT_ARCHS
    for path in BUILTIN_TEACHERS.values():
        load_teacher_class(path)
    for path in STUDENTS.values():
        load_student_class(path)
    textseg, maskclip = teacher_traits("textseg"), teacher_traits("maskclip")
    assert (textseg.pretrained_kind, textseg.fits_on_source, textseg.uses_arch) == ("file", True, False)
    assert (maskclip.pretrained_kind, maskclip.fits_on_source, maskclip.uses_arch,
            maskclip.supports_sliding_window) == ("file_or_tag", False, True, True)


def test_no_module_compares_teacher_kinds_by_name():
    """The kinds' differences are traits of their classes: no `kind == "textseg"` outside the registry."""
    found = []
    for path in [*ROOT.joinpath("orchestrator").rglob("*.py"), *ROOT.joinpath("trainables").rglob("*.py")]:
        text = path.read_text()
        for kind in TEACHER_KINDS:
            for pattern in (f'== "{kind}"', f'!= "{kind}"', f"== '{kind}'", f"!= '{kind}'"):
                if pattern in text:
                    found.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert found == []


def test_help_lists_the_registered_names_and_the_plugin_form():
    text = allowed_values_help()
    assert "teacher.kind = textseg | maskclip | package.module:Class (a plug-in teacher" in text
    assert "model.arch = unet_small | deeplabv3plus_r50 | deeplabv3plus_r101 | package.module:Class" in text


# ---- config validation and its error texts ----------------------------------------------------------------------

def test_import_paths_are_accepted_and_recorded_as_given(plugins):
    cfg = build_config({"teacher.kind": "my_plugins:RuleTeacher", "model.arch": "my_plugins:TinyStudent"})
    assert (cfg.teacher.kind, cfg.model.arch) == ("my_plugins:RuleTeacher", "my_plugins:TinyStudent")
    assert build_config({"teacher.kind": "my_plugins:Outer.Inner"}).teacher.kind == "my_plugins:Outer.Inner"


def test_a_value_neither_registered_nor_an_import_path_lists_both_forms():
    with pytest.raises(ConfigError, match=r"--set: config key 'teacher.kind': 'sed' is not a valid value: neither a "
                                          r"registered teacher nor an import path. Fix: use one of textseg, maskclip, "
                                          r"or a plug-in's import path package.module:Class"):
        build_config({"teacher.kind": "sed"}, "--set")
    with pytest.raises(ConfigError, match=r"'model.arch': 'my_plugins:' is not a valid value"):
        build_config({"model.arch": "my_plugins:"})


def test_a_missing_module_is_one_error_line_naming_key_value_and_fix(plugins, capsys):
    err = cli_error(capsys, "train", "--set", "teacher.kind=no_such_plugins:Teacher")
    assert err == ("error: --set: config key 'teacher.kind': 'no_such_plugins:Teacher' names module 'no_such_plugins', "
                   "which cannot be found (No module named 'no_such_plugins'). Fix: make the module importable in "
                   "this process and on every Ray node: install it (pip install -e) or put its folder on PYTHONPATH "
                   "(see docs/extending.md).")


def test_a_module_whose_own_import_fails_names_what_it_lacks(plugins, capsys):
    (plugins.parent / "broken_plugins.py").write_text("import not_installed_anywhere_xyz\n\nclass T:\n    pass\n")
    err = cli_error(capsys, "train", "--set", "teacher.kind=broken_plugins:T")
    assert "names module 'broken_plugins', whose import failed: it imports 'not_installed_anywhere_xyz', which is " \
           "not installed" in err
    assert "Fix: install 'not_installed_anywhere_xyz' on every node" in err


def test_a_missing_class_suggests_the_closest_name(plugins, capsys):
    err = cli_error(capsys, "train", "--set", "teacher.kind=my_plugins:RuleTeachr")
    assert f"config key 'teacher.kind': 'my_plugins:RuleTeachr' cannot be found: module 'my_plugins' ({plugins}) " \
           "has no attribute 'RuleTeachr'. Fix: did you mean my_plugins:RuleTeacher?" in err


@pytest.mark.parametrize("key, value, message", [
    ("teacher.kind", "NoPredict", "is not a teacher class: it has no predict(images) method. Fix: give the class a "
                                  "method predict(images) -> (labels, confidence)"),
    ("teacher.kind", "WrongTeacherInit", "is not a teacher class: it cannot be constructed as "
                                         "WrongTeacherInit(spec, vocabulary) (its signature is ()). Fix: give it "
                                         "__init__(self, spec, vocabulary)"),
    ("teacher.kind", "BadTrait", "declares the trait pretrained_kind = 'url'. Fix: use one of file, file_or_tag, none"),
    ("teacher.kind", "FitsWithoutHook", "declares fits_on_source = True but has no fit_weights hook"),
    ("teacher.kind", "not_a_class", "names a function, not a class"),
    ("model.arch", "NotAModule", "is not a student class: it is not a torch.nn.Module subclass. "
                                 "Fix: derive it from torch.nn.Module"),
    ("model.arch", "NoNeedFp", "is not a student class: its forward(x) takes no need_fp argument. "
                               "Fix: define forward(self, x, need_fp=False)"),
])
def test_a_class_without_the_protocol_is_refused_with_what_it_lacks(plugins, capsys, key, value, message):
    err = cli_error(capsys, "train", "--set", f"{key}=my_plugins:{value}")
    assert err.startswith(f"error: --set: config key '{key}': 'my_plugins:{value}' {message}"), err


def test_a_search_space_refuses_a_bad_plugin_before_ray_starts(plugins, capsys, tmp_path):
    err = cli_error(capsys, "sweep", "--space", str(SMOKE), "--set", "model.arch=my_plugins:NotAModule",
                    "--storage", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"))
    assert f"{SMOKE} + --set: config key 'model.arch': 'my_plugins:NotAModule' is not a student class" in err
    assert not (tmp_path / "runs").exists()   # refused before anything was written (or Ray started)


def test_teacher_fit_refuses_a_plugin_that_is_not_fitted(plugins, capsys):
    err = cli_error(capsys, "teacher", "fit", "--set", "teacher.kind=my_plugins:RuleTeacher")
    assert "teacher.kind=my_plugins:RuleTeacher is not fitted on the source corpus" in err


# ---- teachers ---------------------------------------------------------------------------------------------------

def test_a_plugin_teacher_is_built_and_its_outputs_brought_to_the_label_format(plugins):
    from orchestrator.teachers import TeacherSpec, build_teacher

    teacher = build_teacher(TeacherSpec(kind="my_plugins:RuleTeacher", pretrained=""), VOCAB)
    images = np.zeros((2, 16, 12, 3), np.uint8)
    images[:, 4:10, 3:8] = (250, 10, 10)
    labels, conf = teacher.predict(images)
    assert labels.dtype == np.uint8 and conf.dtype == np.float32 and labels.shape == conf.shape == (2, 16, 12)
    assert labels[0, 5, 4] == 1 and labels[0, 0, 0] == 0 and conf[0, 0, 0] == pytest.approx(0.9)
    assert teacher.num_classes == VOCAB.num_classes   # the plug-in's own attributes stay reachable


@pytest.mark.parametrize("output, message", [
    ("labels", "returned a ndarray, not the pair (labels, confidence)"),
    ((np.zeros((1, 4, 4), np.int64), np.zeros((1, 4, 5))), "returned confidence shaped (1, 4, 5)"),
    ((np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4))), "returned labels of dtype float32"),
    ((np.full((1, 4, 4), 3), np.zeros((1, 4, 4))), "returned class id 3, outside the vocabulary's 3 classes"),
    ((np.zeros((1, 4, 4), np.int64), np.full((1, 4, 4), 1.5)), "returned a confidence outside [0, 1]"),
])
def test_wrong_plugin_outputs_are_refused_before_they_reach_the_cache(output, message):
    from orchestrator.teachers.registry import CheckedTeacher

    class Fixed:
        def predict(self, images):
            return np.zeros((1, 4, 4), np.int64) if output == "labels" else output

    with pytest.raises(ValueError, match=re.escape(f"teacher.kind=my:Fixed: predict {message}")):
        CheckedTeacher(Fixed(), 3, "my:Fixed").predict(np.zeros((1, 4, 4, 3), np.uint8))


def test_spec_checks_follow_the_plugins_traits(plugins):
    from orchestrator.teachers import TeacherSpec

    TeacherSpec(kind="my_plugins:RuleTeacher", pretrained="")                      # pretrained_kind = "none"
    with pytest.raises(ValueError, match=r"TeacherSpec\(kind='my_plugins:FittedTeacher'\) needs `pretrained`"):
        TeacherSpec(kind="my_plugins:FittedTeacher", pretrained="")
    with pytest.raises(ValueError, match=r"sliding_window is a maskclip option; my_plugins:RuleTeacher runs on"):
        TeacherSpec(kind="my_plugins:RuleTeacher", pretrained="", sliding_window=True)


TINY_DATA = {"data.num_train": 20, "data.num_val": 4, "data.num_test": 0, "data.num_ood": 8, "data.num_source": 8,
             "data.image_size": 32, "data.crop_size": 32}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A cache holding a very small generated benchmark (no Ray)."""
    from orchestrator.data.plan import dataset_root

    cache = tmp_path_factory.mktemp("plugin_cache")
    dataset_root(build_config(TINY_DATA), cache)
    return cache


def test_label_key_of_a_plugin_digests_its_source_and_changes_with_it(plugins, tiny_cache):
    from orchestrator.labels.job import label_job

    cfg = build_config({**TINY_DATA, "teacher.kind": "my_plugins:RuleTeacher"})
    job = label_job(cfg, tiny_cache)
    inputs = job.key_inputs
    assert inputs["teacher_kind"] == "my_plugins:RuleTeacher" and inputs["weights"] == "none"
    assert inputs["teacher_code"] == hashlib.sha256(plugins.read_bytes()).hexdigest()
    assert job.store.key.startswith("my_plugins.RuleTeacher-")   # no ':' in a folder name
    assert job.teacher_spec["kind"] == "my_plugins:RuleTeacher" and job.teacher_spec["arch"] == ""  # no uses_arch

    plugins.write_text(PLUGINS + "\n# an edit\n")
    assert label_job(cfg, tiny_cache).store.key != job.store.key

    builtin = label_job(build_config(TINY_DATA), tiny_cache)   # built-ins keep the keys they had
    assert "teacher_code" not in builtin.key_inputs and builtin.store.key.startswith("textseg-")


def test_a_plugin_with_fits_on_source_is_fitted_and_then_reused(plugins, tiny_cache, monkeypatch):
    import ray

    from orchestrator.data.plan import dataset_root
    from orchestrator.labels.job import label_job
    from orchestrator.teachers.fit_task import checksum_file, ensure_fitted_teacher, teacher_spec

    cfg = build_config({**TINY_DATA, "teacher.kind": "my_plugins:FittedTeacher", "teacher.fit_steps": 3})
    root = dataset_root(cfg, tiny_cache)
    said: list[str] = []
    # fitted in this process, as without Ray (a Ray another test started could not import my_plugins: it is on
    # this process's sys.path only)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    path = ensure_fitted_teacher(cfg, tiny_cache, root, said.append)
    assert path.name.startswith("my_plugins.FittedTeacher-") and path.parent == tiny_cache / "teachers"
    assert json.loads(path.read_text())["steps"] == 3 and checksum_file(path).is_file()
    assert said == [f"fitting the my_plugins:FittedTeacher teacher on {root / 'source'} (3 steps) → {path}"]
    assert ensure_fitted_teacher(cfg, tiny_cache, root, said.append) == path and len(said) == 1
    assert teacher_spec(cfg, tiny_cache, root).pretrained == str(path)
    assert label_job(cfg, tiny_cache).key_inputs["weights"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_plugin_that_needs_a_weights_file_names_the_missing_one(plugins, tiny_cache, tmp_path):
    from orchestrator.data.plan import dataset_root
    from orchestrator.teachers.fit_task import teacher_spec

    cfg = build_config({**TINY_DATA, "teacher.kind": "my_plugins:FittedTeacher",
                        "teacher.pretrained": str(tmp_path / "gone.json")})
    with pytest.raises(UserError, match=r"teacher.pretrained: file '.*gone.json' does not exist. Fix: give the "
                                        r"path of a checkpoint written by `python run.py teacher fit`"):
        teacher_spec(cfg, tiny_cache, dataset_root(cfg, tiny_cache))


# ---- students ---------------------------------------------------------------------------------------------------

def test_a_plugin_student_is_built_from_the_model_config_and_trains_in_one_group(plugins, torch_one_thread):
    from trainables.models import build_student_from_config
    from trainables.optim import build_optimizer, param_groups

    config = ModelConfig(arch="my_plugins:TinyStudent", width=6, fp_dropout=0.5, pretrained_backbone="enc.pt")
    model = build_student_from_config(4, config, read_backbone=False)
    assert type(model).__name__ == "TinyStudent" and model.backbone_file == ""   # a saved student: no file read
    assert build_student_from_config(4, config).backbone_file == "enc.pt"
    x = torch.randn(2, 3, 17, 15)
    assert model(x).shape == (2, 4, 17, 15)
    clean, perturbed = model(x, need_fp=True)
    assert clean.shape == perturbed.shape == (2, 4, 17, 15) and not torch.allclose(clean, perturbed)
    groups = param_groups(model, 0.01, 10.0)   # no backbone: every parameter at the base lr
    assert len(groups) == 1 and groups[0]["lr"] == 0.01 and groups[0]["lr_scale"] == 1.0
    assert len(groups[0]["params"]) == len(list(model.parameters()))
    optimizer = build_optimizer(model, 0.01, 10.0)
    model(x).mean().backward()
    optimizer.step()


def test_builtin_students_are_built_through_the_registry_from_their_config():
    from trainables.models import DeepLabV3PlusR101, UNetSmall, build_student_from_config

    unet = build_student_from_config(3, ModelConfig(arch="unet_small", width=4))
    assert type(unet) is UNetSmall and unet.classifier.in_channels == 4
    assert type(build_student_from_config(3, ModelConfig(arch="deeplabv3plus_r101"))) is DeepLabV3PlusR101


# ---- the whole pipeline, as a user runs it ----------------------------------------------------------------------

@pytest.mark.e2e
def test_smoke_sweep_with_a_plugin_teacher_and_student(tmp_path):
    """`run.py sweep` in a subprocess, the plug-ins in a folder on PYTHONPATH (so Ray's workers import them too)."""
    from mlflow.tracking import MlflowClient

    module = tmp_path / "my_plugins.py"
    module.write_text(PLUGINS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"--set={key}={value}" for key, value in TINY.items()]
    command = [sys.executable, str(ROOT / "run.py"), "sweep", "--space", str(SMOKE),
               "--set", "teacher.kind=my_plugins:RuleTeacher", "--set", "model.arch=my_plugins:TinyStudent",
               "--set", "model.width=8", *sets, "--tracking-uri", uri,
               "--storage", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a private Ray of its own
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count(" done ") >= 2   # the results table: both trials done

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    assert sorted(r.data.params["ood.ratio"] for r in trials) == ["0.0", "0.5"]
    for run in [*parents, *trials]:
        assert run.data.params["teacher.kind"] == "my_plugins:RuleTeacher"
        assert run.data.params["model.arch"] == "my_plugins:TinyStudent"
    for run in trials:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")] == [1, 2]   # each once

    manifests = list((tmp_path / "cache" / "labels").glob("*/manifest.json"))
    assert len(manifests) == 1   # one teacher setting: labeled once, for the trial with OOD images
    manifest = json.loads(manifests[0].read_text())
    assert manifest["key_inputs"]["teacher_kind"] == "my_plugins:RuleTeacher"
    assert manifest["key_inputs"]["teacher_code"] == hashlib.sha256(module.read_bytes()).hexdigest()
    assert manifests[0].parent.name.startswith("my_plugins.RuleTeacher-")
    assert not (tmp_path / "cache" / "teachers").exists()   # a teacher without weights: nothing fitted
