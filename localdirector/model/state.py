"""Service states shared by virtual and real machines (FIG. 3A field 310, FIG. 3B field 322)."""

from enum import StrEnum


class State(StrEnum):
    IN_SERVICE = "IS"
    OUT_OF_SERVICE = "OOS"
    FAILED = "FAILED"
    TESTING = "TESTING"
