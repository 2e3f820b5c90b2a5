"""`python -m rnnlab ...` runs the command line, as the `rnnlab` script does."""

import sys

from rnnlab.cli import run

sys.exit(run())
