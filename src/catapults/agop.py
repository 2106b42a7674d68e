"""The public AGOP API: ``from catapults.agop import agop, alignment`` (the implementation lives in
:mod:`catapults.curvature.agop`; conventions in docs/conventions.md)."""

from catapults.curvature.agop import *  # noqa: F403
from catapults.curvature.agop import __all__  # noqa: F401
