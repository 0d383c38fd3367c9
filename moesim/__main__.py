"""`python -m moesim` runs the CLI."""

import sys

from moesim.cli import main

sys.exit(main())
