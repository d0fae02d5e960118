"""The module-level ``__getattr__`` of :mod:`cvsjepa` (PEP 562): ``from cvsjepa import CVSModel``
imports torch and the model code only when asked, so ``import cvsjepa`` stays light."""

from __future__ import annotations


def __getattr__(name: str):
    if name == "CVSModel":
        from ..api import CVSModel

        return CVSModel
    raise AttributeError(f"module 'cvsjepa' has no attribute {name!r}")
