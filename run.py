#!/usr/bin/env python
"""SemiOVS orchestrator command line: `python run.py --help`."""
import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main())
