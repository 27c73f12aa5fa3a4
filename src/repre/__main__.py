"""`python -m repre ...` (also what `torchrun -m repre` runs)."""

import sys

from repre.cli import main

if __name__ == "__main__":
    sys.exit(main())
