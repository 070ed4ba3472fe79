"""Command line: parse, build the request, call the orchestrator. Heavy imports happen inside commands.

`run.py`, the installed `semiovs` and `python -m orchestrator` call `main`; `parser.py` holds the grammar,
`commands.py` one function per command, `version.py` the package version.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from orchestrator.cli.parser import build_parser
from orchestrator.core.errors import UserError


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line (`run.py`, `semiovs`, `python -m orchestrator`); returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    try:
        _configure_output(args)
        return _dispatch(args)
    except UserError as err:
        print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)   # one line, whatever it quotes
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; resume a sweep with --resume", file=sys.stderr)
        return 130
    except Exception as err:   # a full disk wherever it happens: one line naming the folder, not a traceback
        from orchestrator.core.atomic import folder_of, is_no_space, no_space_error

        if not is_no_space(err):
            raise
        folder = folder_of(err) or "the folder being written"
        print(f"error: {no_space_error(folder, 'writing', 'run the same command again (a sweep: with --resume)')}",
              file=sys.stderr)
        return 2


def _configure_output(args: argparse.Namespace) -> None:
    from orchestrator.core.console import configure

    if args.quiet and args.verbose:
        raise UserError("--quiet and --verbose ask for less and for more output. Fix: pass one of them.")
    configure(verbose=args.verbose)


def _dispatch(args: argparse.Namespace) -> int:
    from orchestrator.cli import commands

    handler = {
        "sweep": commands.sweep, "train": commands.train, "report": commands.report, "label": commands.label, "ui": commands.ui,
        "sync": commands.sync, "predict": commands.predict, "evaluate": commands.evaluate,
        ("data", "synth"): commands.data_synth, ("data", "check"): commands.data_check,
        ("teacher", "fit"): commands.teacher_fit, ("teacher", "eval"): commands.teacher_eval,
    }
    sub = getattr(args, "data_command", None) or getattr(args, "teacher_command", None)
    key = (args.command, sub) if sub else args.command
    return handler[key](args)
