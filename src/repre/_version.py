"""The package version, in a module of its own: `repre --version` and `--help` load no torch."""

__version__ = "0.2.0"
