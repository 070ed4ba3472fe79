"""`python -m orchestrator COMMAND ...`: the same command line as `run.py` and the installed `semiovs`."""
import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m orchestrator"))
