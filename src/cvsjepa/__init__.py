"""cvsjepa: Critical View of Safety classifiers on V-JEPA 2 video features."""

from .criteria import CRITERIA
from .version import __version__

__all__ = ["CRITERIA", "CVSModel", "__version__"]


def __getattr__(name: str):
    """``from cvsjepa import CVSModel`` imports torch and the model code only when asked (PEP 562),
    so ``import cvsjepa`` stays light."""
    if name == "CVSModel":
        from .api import CVSModel

        return CVSModel
    raise AttributeError(f"module 'cvsjepa' has no attribute {name!r}")
