"""`python -m repre ...` (also what `torchrun -m repre` runs)."""

from repre.cli import console

if __name__ == "__main__":
    console()
