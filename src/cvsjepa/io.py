"""Crash-safe file writes: a finished file is either the old one or the complete new one.

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed
over the target (``os.replace`` is atomic on POSIX). A crash mid-write leaves a ``.tmp-*`` file
that nothing reads, never a truncated file with the real name.

File modes: ``mkstemp`` creates its file 0600 whatever the umask (and so does safetensors'
``save_file``); the written file is given the mode an ordinary ``open()`` would (``0666 & ~umask``:
0644 under the usual 022) before it gets its name, so lab-mates can read runs and shared feature
stores exactly as the umask allows (:func:`apply_umask`, also for folders other libraries write).

A full disk surfaces differently in each writer: ``OSError(ENOSPC)`` from Python, a
``SafetensorError`` naming "os error 28" from safetensors, and from ``torch.save`` a bare
``RuntimeError`` ("unexpected pos ...") that does not mention the disk at all. Every failed write
is therefore checked against the free space left where it was written (:func:`_is_disk_full`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, CVSJepaError


class DiskFullError(CVSJepaError):
    """No space left while writing; the previous version of the file is intact."""


def atomic_write(path: Path, write: Callable[[Path], None], disk_full: str = "") -> None:
    """``write(tmp)`` fills a temporary file next to ``path``; it is fsync'ed and renamed over
    ``path``, and the folder is fsync'ed so the rename itself survives a power cut. On any failure
    the temporary file is removed; a full disk raises :class:`DiskFullError` (``disk_full``
    replaces its default message)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        apply_umask(tmp)  # after writing: safetensors replaces the file with its own (0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except Exception as e:
        full = _is_disk_full(e, path.parent)  # before the temporary file gives its space back
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(disk_full or f"disk full while writing {path}; the previous version (if any) "
                                             f"is intact. Free space and run again.") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left", "os error 28", "disk quota", "os error 122")
LOW_SPACE_BYTES = 1 << 20  # a write that failed with less than this left on its file system ran out of space


def _is_disk_full(e: Exception, folder: Path) -> bool:
    """Whether a failed write ran out of space: its errno, its message, or (torch, whose error says
    nothing about the disk) less than :data:`LOW_SPACE_BYTES` free where it was writing."""
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
        return True
    if any(t in str(e).lower() for t in _DISK_FULL_TEXT):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def current_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux >= 4.7)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give a file, or a folder and everything in it, written by another library the mode ``open()``
    and ``mkdir`` would give under the umask (0644 / 0755 under 022): ``tempfile.mkdtemp`` makes
    folders 0700 and safetensors (>= 0.8, also inside ``save_pretrained``) writes files 0600."""
    mask = current_umask()
    path = Path(path)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def check_replaceable(out: Path, *, overwrite: bool, marker: str, command: str, error: type[CVSJepaError]) -> None:
    """``out`` may be written as a whole folder: it does not exist, or ``overwrite`` is set and it is an
    empty folder or one ``command`` wrote (it holds ``marker``); else ``error``. A user's folder is
    never replaced."""
    if out.exists() and not overwrite:
        raise error(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / marker).is_file())):
        raise error(f"{out} was not written by `{command}` (it has no {marker}), so --overwrite will not "
                    f"replace it; choose another --out or remove it yourself")


@contextmanager
def staged_folder(out: Path, *, overwrite: bool, marker: str, command: str, error: type[CVSJepaError]):
    """A temporary sibling of ``out`` to write a whole folder into (:func:`check_replaceable` first):
    given the umask's modes and renamed into place when the block succeeds, so ``out`` is either the
    old folder or the complete new one; removed when the block fails."""
    out = Path(out).expanduser()
    check_replaceable(out, overwrite=overwrite, marker=marker, command=command, error=error)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    except PermissionError as e:
        raise error(f"cannot write {out}: permission denied; choose another --out") from e
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp makes 0700 and safetensors writes 0600: lab-mates must read the folder
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively, so the JSON is strict (readable by any JSON parser)."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """For resume state only (optimizer, RNG): plain containers of tensors and numbers, so it loads
    back with ``torch.load(weights_only=True)``."""
    atomic_write(path, lambda p: torch.save(obj, p))


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """Hex sha256 of a file, read in chunks (hashing a 4 GB file needs no 4 GB of RAM)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path, error: type[CVSJepaError], damaged: str) -> dict:
    """A JSON file that must hold an object; ``error(...)`` naming the file, with ``damaged`` (what
    to conclude or do) appended, when it is missing, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing; {damaged}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); {damaged}") from e
    if not isinstance(data, dict):
        raise error(f"{path} does not hold a JSON object; {damaged}")
    return data


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for a corrupt header/body
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated "
                              f"or not written by cvsjepa") from e


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` that never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"refusing to load {path}: it is not a plain tensor checkpoint that loads "
                              f"with weights_only=True ({type(e).__name__}). Only load files written "
                              f"by cvsjepa or official weight releases.") from e
