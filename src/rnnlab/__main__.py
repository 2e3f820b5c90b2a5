"""`python -m rnnlab ...` runs the command line, as the `rnnlab` script does."""

import sys

from rnnlab.cli import main

sys.exit(main())
