"""Property tests (Hypothesis) over search-space files, `--set` values and command lines, run in-process.

Whatever the input, `run.py` exits 0 or exits 2 with one `error:` line, never a traceback. An input that
passes every check reaches Ray's start, which is replaced here by a sentinel: such a command would run, and
the test stops it there (nothing heavy runs). The working folder is checked empty at the end: no input made
any command write before it was validated.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from orchestrator.cli import main
from orchestrator.core.config import CONFIG_KEYS
from orchestrator.sweep.space import TOP_KEYS

FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


class ReachedRay(Exception):
    """Every check passed: the command would now start Ray."""


@pytest.fixture(scope="module")
def workdir():
    """A private working folder for the module, with Ray's start replaced by the sentinel."""
    before = os.getcwd()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (folder / "in").mkdir()
    os.chdir(folder)
    try:
        with mock.patch("orchestrator.runtime.init_ray", side_effect=ReachedRay):
            yield folder
    finally:
        os.chdir(before)
    written = sorted(p.name for p in folder.iterdir() if p.name != "in")
    assert written == [], f"commands wrote {written} before failing validation"


def outcome(argv: list[str]) -> str:
    """'ran' | 'exit0' | 'exit2'; fails the test on a traceback, another exit code, or a bad error line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except ReachedRay:
            return "ran"
        except SystemExit as stop:   # argparse: usage, then one "run.py ...: error: ..." line
            code = stop.code
    text = err.getvalue()
    assert "Traceback" not in text
    assert code in (0, 2), (argv, code, text)
    if code == 2:
        errors = [line for line in text.splitlines() if "error:" in line]
        assert len(errors) == 1, (argv, text)
        assert text.startswith("error: ") or text.startswith("usage: "), (argv, text)
    return f"exit{code}"


# ---- search-space files ---------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**3, 10**12), st.text(max_size=12),
                    st.floats(allow_nan=True, allow_infinity=True))
keys = st.one_of(st.sampled_from(sorted(CONFIG_KEYS)), st.text(max_size=12))
distributions = st.one_of(
    scalars, st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["grid", "choice"]), st.lists(scalars, max_size=4), min_size=1, max_size=1),
    st.dictionaries(st.sampled_from(["uniform", "loguniform", "randint", "normal"]), st.lists(scalars, max_size=3),
                    min_size=1, max_size=1),
    st.dictionaries(st.text(max_size=6), scalars, max_size=2))
schedulers = st.one_of(scalars, st.fixed_dictionaries(
    {"kind": st.one_of(st.sampled_from(["asha", "fifo"]), scalars)},
    optional={"max_t": scalars, "grace_period": scalars, "reduction_factor": scalars, "x": scalars}))
spaces = st.fixed_dictionaries({}, optional={
    "name": st.one_of(scalars, st.text(max_size=120)), "metric": scalars, "mode": st.one_of(st.just("min"), scalars),
    "num_samples": st.one_of(st.integers(-2, 10**12), scalars), "max_concurrent_trials": scalars,
    "seed": scalars, "scheduler": schedulers, "fixed": st.one_of(scalars, st.dictionaries(keys, scalars, max_size=3)),
    "parameters": st.one_of(scalars, st.dictionaries(keys, distributions, max_size=3)),
    "unknown": scalars})


def _write(workdir: Path, text: str) -> str:
    path = workdir / "in" / "space.yaml"
    path.write_text(text)
    return str(path)


@FUZZ
@given(doc=spaces)
def test_any_space_file_exits_2_with_one_error_line_or_would_run(workdir, doc):
    assert set(doc) <= set(TOP_KEYS) | {"unknown"}
    space = _write(workdir, yaml.safe_dump(doc, allow_unicode=True))
    outcome(["sweep", "--space", space, "--quiet"])


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_as_a_space_file_exits_2_or_would_run(workdir, text):
    outcome(["sweep", "--space", _write(workdir, text), "--quiet"])


# ---- --set values ---------------------------------------------------------------------------------

values = st.one_of(st.text(max_size=20), st.integers(-10**20, 10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["[1, 2]", "{a: 1}", "!!python/object:os.system ls", ".nan", "-.inf", "1e400",
                                    "~", "true", "0x1f", "'quoted'", "&anchor x", "*alias", "|", "=", "a=b"]))
text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)


@FUZZ
@given(sets=st.lists(st.tuples(st.one_of(st.sampled_from(sorted(CONFIG_KEYS)), text), values), max_size=4))
def test_any_set_values_exit_2_with_one_error_line_or_would_run(workdir, sets):
    space = workdir / "in" / "base.yaml"
    space.write_text("fixed: {train.epochs: 1}\nparameters: {train.lr: {grid: [0.1, 0.2]}}\n")
    argv = ["sweep", "--space", str(space), "--quiet"]
    for key, value in sets:
        if "\x00" in value:
            continue   # a command line cannot carry a NUL
        argv += ["--set", f"{key}={value}"]
    outcome(argv)


# ---- whole command lines --------------------------------------------------------------------------

tokens = st.one_of(text, st.sampled_from(["--space", "--name", "--set", "--resume", "--max-concurrent", "--storage",
                                          "--cache", "--tracking-uri", "--ray-address", "--quiet", "--experiment",
                                          "--split", "-h", "..", "/", "sqlite:///x.db", "http://127.0.0.1:9",
                                          "train.epochs=2", "--set=ood.ratio=2", "0", "-1", "99999999999999999999"]))
commands = st.sampled_from([["sweep"], ["train"], ["label"], ["data", "check"], []])


@FUZZ
@given(command=commands, rest=st.lists(tokens, max_size=8))
def test_any_command_line_exits_0_or_2_with_one_error_line(workdir, command, rest):
    if command == ["data", "check"] and rest and rest[0] in ("/", ".."):
        rest = rest[1:]   # keep the read-only scan inside the test's folder
    outcome(command + [t.replace("\x00", "") for t in rest])


def test_the_sentinel_is_reached_by_a_valid_command(workdir):
    """The properties above can tell 'would run' from 'refused': a valid sweep reaches Ray's start."""
    space = _write(workdir, "parameters: {ood.ratio: {grid: [0, 0.5]}}\n")
    assert outcome(["sweep", "--space", space, "--storage", str(workdir / "in" / "runs")]) == "ran"
    assert outcome(["sweep", "--space", space, "--set", "train.lr=-1"]) == "exit2"
