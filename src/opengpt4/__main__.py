"""`python -m opengpt4 ...`: the same as the `opengpt4` command."""

import sys

from opengpt4.cli import main

sys.exit(main())
