"""`python -m rglcd.evaluate ...`: see rglcd.evaluate.cli."""

import sys

from rglcd.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
