"""No defense: the victim is trained by its hashing method's own procedure."""
from __future__ import annotations

from benchmark import Defense


class NoDefense(Defense):
    name = "none"
    paper = "baseline: standard training of the hashing method"
