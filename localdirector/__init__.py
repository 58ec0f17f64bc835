"""localdirector: a software LocalDirector (US 6,324,177) for Linux."""

__version__ = "0.1.0"
