"""What a command prints while it works: progress lines on stdout, silenced by --quiet; warnings on stderr.

Every line the orchestrator prints goes through `lines_of`: when stdout is not a terminal (a log file, a pipe,
CI) each line starts with the time, and a line longer than WIDTH characters is folded at spaces onto indented
continuation lines, so a log stays readable and greppable. A warning starts with `warning: `.

Ray's own output (its INFO lines, Tune's status tables, Train's report dumps) is off unless `--verbose`
(`configure`, `is_verbose`): Ray's logging settings do it, in the driver and, through the `SEMIOVS_VERBOSE`
environment variable Ray hands every worker, in the workers (`ray_log_level`).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

WIDTH = 200                       # no printed line is longer (a longer one is folded)
CONTINUATION = "    "             # the indent of a folded line's continuation
VERBOSE_ENV = "SEMIOVS_VERBOSE"   # "1": Ray's own output too (--verbose); read by the workers as well


def is_verbose(env=os.environ) -> bool:
    return env.get(VERBOSE_ENV) == "1"


def ray_log_level(env=os.environ) -> str:
    """The level of Ray's own loggers (Ray Train's included): INFO with --verbose, else WARNING."""
    return "INFO" if is_verbose(env) else "WARNING"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stamps_lines() -> bool:
    """Whether printed lines carry the time: when stdout is not a terminal."""
    return not _is_terminal(sys.stdout)


def lines_of(text: str, width: int = WIDTH, stamp: bool | None = None) -> list[str]:
    """`text` as the lines to print: each at most `width` characters (folded at spaces), each with the time in
    front when `stamp` (default: stdout is not a terminal). Blank lines are kept on a terminal only."""
    stamp = stamps_lines() if stamp is None else stamp
    prefix = time.strftime("%Y-%m-%d %H:%M:%S ") if stamp else ""
    out = []
    for raw in text.splitlines() or [""]:
        raw = raw.rstrip()
        if not raw:
            if not stamp:
                out.append("")
            continue
        if len(prefix) + len(raw) <= width:
            out.append(prefix + raw)
            continue
        indent = len(raw) - len(raw.lstrip())
        folded = textwrap.wrap(raw, width=width - len(prefix), initial_indent=" " * indent,
                               subsequent_indent=" " * indent + CONTINUATION, break_on_hyphens=False)
        out.extend(prefix + part for part in folded)
    return out


def emit(text: str, stream=None) -> None:
    """Print `text` as `lines_of` shapes it, on `stream` (default stdout at the time of the call)."""
    stream = stream or sys.stdout
    for line in lines_of(text):
        print(line, file=stream, flush=True)


def warn(text: str) -> None:
    """A warning: one `warning: ` line (folded if long) on stderr, shown with --quiet too."""
    emit("warning: " + text, sys.stderr)


def note(text: str) -> None:
    """A line on stderr that explains a wait (stdout may hold a command's JSON result), shown with --quiet too."""
    emit(text, sys.stderr)


class Console:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream   # None = sys.stdout at the time of each call (tests capture it)

    def say(self, *parts) -> None:
        if not self.quiet:
            emit(" ".join(str(p) for p in parts), self.stream or sys.stdout)

    def progress(self, label: str, total: float, unit: str = "it"):
        """A progress bar (or periodic lines) for a long step; nothing with --quiet."""
        from orchestrator.core.progress import Progress, silent

        if self.quiet:
            return silent(label, total, unit)
        return Progress(label, total, unit, stream=self.stream, write=lambda line: emit(line, self.stream))


# ---- the command's output settings ----------------------------------------------------------------------

def configure(verbose: bool = False, env=os.environ) -> None:
    """Once per command, before Ray or MLflow is imported: how much of the libraries' output shows, and every
    Python warning as a `warning:` line."""
    env[VERBOSE_ENV] = "1" if verbose else "0"
    quiet_harmless_ray_lines(env)
    if not verbose:
        env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")   # MLflow's setting: its INFO lines (creating tables...)
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    warn(f"{message} ({category.__name__}, {Path(filename).name}:{lineno})")


class ConsoleFormatter(logging.Formatter):
    """A library's log record as one of our lines: `warning: …` / `error: …`, timestamped like the others."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        prefix = "error: " if record.levelno >= logging.ERROR else "warning: " if record.levelno >= logging.WARNING \
            else ""
        return "\n".join(lines_of(prefix + text))


def restyle_logger(name: str, verbose: bool | None = None) -> None:
    """The console handlers of the library logger `name` (Ray's, Ray Data's) print our way: WARNING and up only,
    as `warning:`/`error:` lines; with --verbose they stay as the library set them. Its file handlers keep
    every level."""
    if is_verbose() if verbose is None else verbose:
        return
    for handler in logging.getLogger(name).handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
            handler.setFormatter(ConsoleFormatter())


# ---- waits that can last ------------------------------------------------------------------------------------

@contextlib.contextmanager
def exclusive_lock(path: Path, what: str, say=note):
    """Hold the file lock `path` (flock, across processes). When another process holds it, say first what this
    one waits for: `what` (e.g. "the OOD labels textseg-1d14…"), which that process is making."""
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            since = time.monotonic()
            say(f"waiting for {what}: another process (a sweep or command making the same entry) holds its "
                f"lock {path}; this one goes on when that one finishes, and reuses what it made")
            fcntl.flock(handle, fcntl.LOCK_EX)
            say(f"got the lock on {what} after {time.monotonic() - since:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- Ray's harmless red line ------------------------------------------------------------------------------

# A line Ray prints in red that is not a failure: Ray Data's and Ray Train's own actors (MapWorker,
# PreemptionWatcher) are created with restarts and a reference among their constructor arguments, which
# core_worker.cc flags once per process (ray #53727, #57733). No Ray setting turns it off (it is logged at
# ERROR by the C++ core straight to file descriptor 2). Narrow on purpose: any other line still shows.
HARMLESS_RAY_LINES = r"has constructor arguments in the object store and max_restarts > 0"

# The raylet warns when many worker processes have started ("8 PYTHON worker processes have been started on node:
# …, which is 4x the maximum expected startup concurrency (2). This could be a result of …", ~480 characters). A
# sweep trips it on any small machine by design: each trial is three processes (its Tune function, Train's
# controller, the Train worker), and the teacher and labeling stages leave a few idle ones. Ray has no setting for
# it but the skip pattern below; --verbose shows it.
RAY_STARTUP_WARNING = r"worker processes have been started on node"

# Ray Train says, once per trial that runs in its local mode (train.num_workers: 0, which the user chose), that
# the training function runs in the trial's process, with a link to file a bug report; --verbose shows it.
RAY_LOCAL_MODE_NOTE = r"Running in local mode\. The training function will run in the same process"


def quiet_harmless_ray_lines(env=os.environ) -> None:
    """Ray's own setting RAY_DEDUP_LOGS_SKIP_REGEX drops a line from the output Ray forwards to this console (it
    stays in Ray's log files): the harmless lines above, unless the user set a pattern. Read when `ray` is
    first imported."""
    lines = HARMLESS_RAY_LINES if is_verbose(env) else \
        f"{HARMLESS_RAY_LINES}|{RAY_STARTUP_WARNING}|{RAY_LOCAL_MODE_NOTE}"
    env.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", lines)


@contextlib.contextmanager
def stderr_without(pattern: str):
    """While the block runs, pass this process's stderr (file descriptor 2, which Ray's C++ core writes to
    directly) through a pipe and copy every line on to the real stderr as it comes, except the lines matching
    `pattern`. Nothing else is held back: a warning written meanwhile (Ray Data's "resources are not enough")
    shows at once, even when the block waits for ever."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # the copier writes to a descriptor of its own: a process started in the block that keeps the pipe open
    # keeps its lines coming after the block too
    copier = threading.Thread(target=_copy_lines, args=(read_end, os.dup(saved), re.compile(pattern)),
                              name="stderr-copier", daemon=True)
    copier.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)        # closes the pipe's last write end here: the copier reads to its end and stops
        os.close(saved)
        copier.join(timeout=10)


def _copy_lines(read_end: int, out: int, drop: re.Pattern) -> None:
    try:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not drop.search(line.decode(errors="replace")):
                    os.write(out, line)
    finally:
        os.close(out)


# ---- Ray worker processes -------------------------------------------------------------------------------

def worker_setup() -> None:
    """Ray's `worker_process_setup_hook` of a private instance (orchestrator.runtime): runs in every worker
    process when it starts.

    Tune frees a finished trial's placement group as soon as the trial's `stop()` returns, and the raylet then
    sends SIGTERM to that trial's still-living process. Ray's SIGTERM handler raises SystemExit wherever the
    main thread is; when that is a garbage-collection callback (a WeakSet's `_remove`), Python cannot raise it,
    prints `Exception ignored in: <function WeakSet...> ... SystemExit: 1` instead (which Ray forwards to the
    driver's console) and the process lingers until the raylet's SIGKILL. Exiting there, as the handler meant
    to, ends that."""
    sys.unraisablehook = _exit_on_swallowed_exit(sys.unraisablehook)


def _exit_on_swallowed_exit(previous):
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            code = unraisable.exc_value.code
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code if isinstance(code, int) else 1)
        previous(unraisable)
    return hook
