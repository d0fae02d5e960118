"""Reading one JPEG frame safely, a small LRU cache of frames, and link-placeholder detection.

Every failure a user can fix (missing file, a symbolic link that arrived as a plain file, a
corrupt or truncated JPEG) is a :class:`DataError` that names the file, never a PIL traceback.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

# A link target written as text: one line of path characters, no JSON/CSV punctuation.
_PATH_TEXT = re.compile(r"[\w\-. /\\~:]+")
_HAS_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{1,4}$")
PLACEHOLDER_MAX_BYTES = 256

LINK_PLACEHOLDER_HINT = ("looks like a symbolic link that arrived as a plain file; re-extract the "
                         "archive on a file system that keeps links")


def looks_like_link_placeholder(path: str | os.PathLike, strict: bool = True) -> bool:
    """True when ``path`` is a tiny regular file whose whole content reads as a path.

    On file systems without symbolic links (some zip/tar extractions, git with
    ``core.symlinks=false``) each link becomes a ~20-byte file holding its target, e.g.
    ``../train/1_25.jpg``. ``strict`` also requires a path separator or a file extension, so that
    a one-line text file such as a ``*_vids.txt`` holding ``1`` or ``1.0`` is not mistaken for one;
    use ``strict=False`` where a folder was expected and a file was found.
    Real symbolic links are followed and are never placeholders.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size < PLACEHOLDER_MAX_BYTES:
        return False
    try:
        text = Path(path).read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    if not text or not _PATH_TEXT.fullmatch(text):
        return False
    if not strict:
        return True
    return "/" in text or "\\" in text or bool(_HAS_EXTENSION.search(text))


def link_placeholder_error(path: str | os.PathLike) -> DataError:
    try:
        target = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        target = "?"
    return DataError(f"{path} {LINK_PLACEHOLDER_HINT} (it holds the text '{target}')")


def missing_file_error(path: str | os.PathLike, what: str = "frame") -> DataError:
    """'missing' with the reason a user can act on: a broken link, or simply absent."""
    if os.path.islink(path):
        return DataError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                         "re-extract the dataset so the link target is present")
    return DataError(f"{what} {path} does not exist; check data.root and that the frames of this split "
                     "were extracted into its folder as {video_id}_{frame}.jpg")


def _existing_frame(path: str | os.PathLike) -> Path:
    """``path`` as a Path after checking it is a real file, not missing and not a link placeholder."""
    path = Path(path)
    if not path.is_file():
        raise missing_file_error(path)
    if looks_like_link_placeholder(path):
        raise link_placeholder_error(path)
    return path


def read_frame(path: str | os.PathLike) -> torch.Tensor:
    """Decode a JPEG (or any PIL image) to uint8 RGB ``[H, W, 3]``.

    The full image is decoded (``img.load()``) so a truncated file fails here, with its name,
    rather than later as a grey band or an obscure error inside a DataLoader worker.
    """
    path = _existing_frame(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports corrupt and truncated data as OSError / UnidentifiedImageError (an OSError).
        raise DataError(f"frame {path} cannot be decoded ({e}); the file is corrupt or truncated: "
                        "re-extract it, or set data.on_bad_sample=skip to leave its clips out") from e
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise DataError(f"frame {path} decoded to shape {arr.shape}, expected [H, W, 3] RGB")
    return torch.from_numpy(arr.copy())


def frame_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a frame from its header, without decoding it; DataError naming the file
    when it is missing, a link placeholder or not an image."""
    path = _existing_frame(path)
    try:
        with Image.open(path) as img:
            return int(img.height), int(img.width)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"frame {path} cannot be read ({e}); the file is corrupt: re-extract it") from e


def clip_size_problem(sizes: dict[Path, tuple[int, int]], what: str,
                      reference: Path | None = None) -> tuple[Path, DataError] | None:
    """The frame of a clip whose size ``(height, width)`` differs from the others, with the error that
    names it; None when all agree. The others' size is the most common one (ties: ``reference``'s,
    the keyframe). A frame of another size (a thumbnail, a frame from another video) would otherwise
    be silently stretched by preprocessing."""
    counts = Counter(sizes.values())
    if len(counts) <= 1:
        return None
    ref = max(counts, key=lambda hw: (counts[hw], reference is not None and sizes.get(reference) == hw))
    odd = next(p for p, hw in sizes.items() if hw != ref)
    return odd, DataError(f"frame {odd} is {sizes[odd][1]}x{sizes[odd][0]} but the other frames of {what} are "
                          f"{ref[1]}x{ref[0]} (width x height): it is damaged or does not belong there; re-extract "
                          "it, or set data.on_bad_sample=skip to leave its clips out")


def check_clip_sizes(sizes: dict[Path, tuple[int, int]], what: str, reference: Path | None = None) -> None:
    """DataError naming the frame of another size (:func:`clip_size_problem`), if any."""
    problem = clip_size_problem(sizes, what, reference)
    if problem is not None:
        raise problem[1]


class FrameCache:
    """Least-recently-used cache of per-frame tensors keyed by path.

    Keyframe clips overlap (16-s windows every 5 s), so a sequential pass over a split asks for
    each frame about ``frames / 5`` times; with ``maxsize`` >= one clip plus the overlap each
    frame is loaded once. ``load`` turns a path into the tensor to keep (decoded, or decoded and
    preprocessed). ``maxsize=0`` disables caching. In DataLoader workers each worker holds its
    own copy.
    """

    def __init__(self, maxsize: int = 64, load: Callable[[Path], torch.Tensor] = read_frame):
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self.load = load
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bad: dict[str, DataError] = {}  # a corrupt frame fails once, not once per clip holding it

    def get(self, path: str | os.PathLike) -> torch.Tensor:
        key = os.fspath(path)
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        if key in self._bad:
            raise self._bad[key]
        self.misses += 1
        try:
            value = self.load(Path(key))
        except DataError as e:
            self._bad[key] = e
            raise
        if self.maxsize > 0:
            self._items[key] = value
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    __call__ = get

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.fspath(path) in self._items

    def clear(self) -> None:
        self._items.clear()
        self._bad.clear()
