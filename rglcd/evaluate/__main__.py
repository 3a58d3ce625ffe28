"""`python -m rglcd.evaluate ...`: see rglcd.evaluate.cli."""

import sys

from rglcd.evaluate.cli import main

sys.exit(main())
