"""One-line descriptions of the config keys, read from the comments on the dataclass fields of
``config.py`` (they are the user-facing documentation of each key): ``cvsjepa config-keys`` prints
them, and a test requires one for every key."""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from . import config
from .config import RunConfig


def key_docs() -> dict[str, str]:
    """``{dotted key: one-line description}`` from the comments on the dataclass fields of config.py (they are
    the user-facing documentation): the comment at the end of a field's line, else the comment lines
    right above it, joined. A key without either is absent (tests/test_config.py requires one each)."""
    source = Path(config.__file__).read_text()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    fields: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            text = comments.get(stmt.end_lineno, "")  # on a field's own line a comment is a trailing one
            if not text:
                above, n = [], stmt.lineno - 1
                while n >= 1 and lines[n - 1].strip().startswith("#"):
                    above.insert(0, comments.get(n, ""))
                    n -= 1
                text = " ".join(above)
            if text:
                fields.setdefault(node.name, {})[stmt.target.id] = text

    def walk(cls: Any, prefix: str) -> dict[str, str]:
        out = {}
        for name, hint in get_type_hints(cls).items():
            if is_dataclass(hint):
                out.update(walk(hint, f"{prefix}{name}."))
            elif name in fields.get(cls.__name__, {}):
                out[f"{prefix}{name}"] = fields[cls.__name__][name]
        return out

    return walk(RunConfig, "")
