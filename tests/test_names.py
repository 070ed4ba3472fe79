"""User strings are data: names with quotes, spaces and any script work; names no consumer can hold are
refused with one `error:` line before anything is written. No trial runs here: the validation functions,
the CLI's exit-2 path, MLflow's filter against a real sqlite store, and Tune's storage-path parsing."""
from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.core.errors import UserError
from orchestrator.core.names import MAX_NAME_CHARS, check_name, name_problem
from orchestrator.tracking import client as tracking

USABLE = ["o'brien test", 'say "hi"', "both ' and \"", "Müller 日本 ölçü", "a..b",
          "semi;colon -- drop table", "$(rm -rf ~)", "x" * MAX_NAME_CHARS, "trial_id = 'x' or 1=1"]
REFUSED = {
    "..": "starts with '.'", ".": "starts with '.'", ".hidden": "starts with '.'", "a/b": "path separator",
    "../escape": "path separator", "a\\b": "path separator", "a#b": "URI character", "50%": "URI character",
    "why?": "URI character", "x" * (MAX_NAME_CHARS + 1): "longer than", "日本" * 35: "longer than",
    "": "is empty", "   ": "is empty", " padded": "white space", "two\nlines": "does not print",
    "tab\tname": "does not print", "nul\x00": "does not print", "-rf": "read as a flag",
}


@pytest.mark.parametrize("name", USABLE)
def test_names_with_quotes_spaces_and_unicode_are_usable(name):
    assert name_problem(name) is None and check_name(name, "--name") == name


@pytest.mark.parametrize("name, problem", REFUSED.items())
def test_names_no_consumer_can_hold_are_refused_with_the_fix(name, problem):
    assert problem in name_problem(name)
    with pytest.raises(UserError, match="Fix: choose a name") as err:
        check_name(name, "--name")
    assert "\n" not in str(err.value)


def _space(tmp_path, name_line=""):
    path = tmp_path / "space.yaml"
    path.write_text(f"{name_line}fixed: {{train.epochs: 1}}\nparameters: {{ood.ratio: {{grid: [0, 0.5]}}}}\n")
    return path


def _run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:   # argparse
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", "../../etc", "a/b", "x" * 300, "two\nlines", "a#b", ""],
                         ids=["dotdot", "up", "slash", "long", "newline", "hash", "empty"])
def test_a_bad_sweep_name_exits_2_with_one_line_before_anything_is_written(tmp_path, capsys, name):
    storage, cache = tmp_path / "runs", tmp_path / "cache"
    code, err = _run_cli(["sweep", "--space", str(_space(tmp_path)), "--name", name, "--storage", str(storage),
                          "--cache", str(cache), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], capsys)
    assert code == 2 and err.startswith("error: --name ") and err.count("\n") == 1, err
    assert "Fix:" in err and "Traceback" not in err
    assert not storage.exists() and not cache.exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("line", ["name: ../up\n", "name: 'a/b'\n", "name: \"x\\ty\"\n", f"name: {'n' * 120}\n"])
def test_a_bad_name_in_the_space_file_names_the_file_and_key(tmp_path, capsys, line):
    code, err = _run_cli(["sweep", "--space", str(_space(tmp_path, line)), "--storage", str(tmp_path / "runs")],
                         capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "space.yaml: 'name':" in err and "Fix: rename the sweep" in err
    assert not (tmp_path / "runs").exists()


def test_train_and_report_check_their_experiment_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--experiment", "../x", "--storage", str(tmp_path / "runs")],
                 ["report", "--experiment", "ok", "--experiment", "../../x"]):
        code, err = _run_cli(argv, capsys)
        assert code == 2 and err.startswith("error: --experiment '") and "Fix:" in err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value, message", [
    ("resources.trial_resource=on demand", "not a Ray resource name"),
    ("resources.worker_resource=CPU", "one of Ray's own resources"),
    ("data.root=" + "r" * 5000, "longer than 4096"),
])
def test_text_config_values_that_would_break_a_name_are_refused(tmp_path, capsys, value, message):
    code, err = _run_cli(["data", "synth", "--out", str(tmp_path / "d"), "--set", value], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_a_split_name_cannot_leave_the_splits_folder(tmp_path):
    from orchestrator.data.voc import SegDataset

    (tmp_path / "ds" / "splits").mkdir(parents=True)
    (tmp_path / "labeled.txt").write_text("a.jpg a.png\n")
    with pytest.raises(UserError, match="escapes its root"):
        SegDataset.resolve(tmp_path / "ds", "../..")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real sqlite store for the module (creating one costs seconds of migrations)."""
    folder = tmp_path_factory.mktemp("names_store")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


def test_usable_names_round_trip_through_a_real_mlflow_store(store):
    """Each name: its experiment, its parent run found again by an exact-match filter (a decoy whose name
    differs by a quote is not), and its artifacts in the folder of that name."""
    folder, uri = store
    for name in ["o'brien test", "both ' and \"", "Müller 日本 ölçü", "trial_id = 'x' or 1=1", "x" * MAX_NAME_CHARS]:
        exp = tracking.ensure_experiment(uri, name)
        decoy = tracking.create_run(uri, exp, "decoy", {"role": "sweep", "sweep_name": name + "'"})
        first = tracking.start_parent_run(uri, exp, name, {"a": 1}, resume=False)
        assert tracking.start_parent_run(uri, exp, name, {"a": 1}, resume=True) == first != decoy, name
        assert [r.info.run_id for r in tracking.find_runs(uri, exp, sweep_name=name)] == [first], name
        tracking.log_text(uri, first, "hello", "inputs/x.txt")
        assert (folder / "mlartifacts" / name / first / "artifacts" / "inputs" / "x.txt").read_text() == "hello"


def test_find_runs_takes_any_tag_value_literally(store):
    _, uri = store
    exp = tracking.ensure_experiment(uri, "filters")
    tracking.create_run(uri, exp, "other", {"role": "trial", "trial_id": "other"})
    for value in ["%", "_", "a' OR tags.role = 'trial", "x\" or \"1\"=\"1", "both ' \"", "\\'"]:
        wanted = tracking.create_run(uri, exp, "w", {"role": "trial", "trial_id": value})
        assert [r.info.run_id for r in tracking.find_runs(uri, exp, role="trial", trial_id=value)] == [wanted]


@pytest.mark.parametrize("name", USABLE)
def test_tune_reads_a_sweep_folder_with_a_usable_name_as_a_plain_local_path(tmp_path, name):
    from pyarrow.fs import LocalFileSystem
    from ray.train._internal.storage import get_fs_and_path   # what Tuner / Tuner.restore use

    from orchestrator.core.paths import inside

    folder = inside(tmp_path, name)
    fs, path = get_fs_and_path(str(folder))
    assert isinstance(fs, LocalFileSystem) and path == str(folder)
