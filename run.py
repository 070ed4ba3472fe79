#!/usr/bin/env python
"""SemiOVS orchestrator command line from a checkout: `python run.py --help` (installed: `semiovs --help`)."""
import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="run.py"))
