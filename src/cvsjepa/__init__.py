"""cvsjepa: Critical View of Safety classifiers on V-JEPA 2 video features."""

__version__ = "0.1.0"
CRITERIA = ("C1", "C2", "C3")
from .predict._lazy import __getattr__  # noqa: E402,F401  lazy `from cvsjepa import CVSModel` (api.py)
