"""The backbone contract every video encoder in cvsjepa honours.

A backbone turns a preprocessed clip ``video [B, T, 3, crop, crop]`` (float, normalised by
``cvsjepa.data.transforms.preprocess_frames``) into patch tokens ``[B, N, D]`` with
``N = prod(token_grid(T))``, token order frame-major then row then column (the order V-JEPA 2's
Conv3d patchifier flattens in), so heads and diagnostics can map token ``i`` back to
``(t', h', w') = np.unravel_index(i, token_grid(T))``.

Two ways to run it:
* ``forward(video)``: ordinary autograd, for training through the encoder (LoRA, unfreezing).
* ``extract(video)``: the frozen path: ``inference_mode``, bf16 autocast on CUDA, float32 tokens
  that a trainable head can consume and backpropagate through (the tokens are constants).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn


class Backbone(nn.Module, ABC):
    """Base class. Subclasses set the attributes below in ``__init__`` and implement ``_encode``.

    Attributes:
        name: honest, human-readable, e.g. ``"vjepa2-tiny (random weights)"``,
            ``"vjepa2-vitl (/data/weights/vjepa2-vitl-fpc64-256)"``.
        family: registry key (``"vjepa2"``); preset: the shape name (``"vitl"``, or ``"custom"``).
        embed_dim: token width D. crop_size / patch_size / tubelet_size: input geometry.
        is_random: True when the weights are a random initialisation (tiny, or random_weights=True).
        path: the weights directory ("" for random weights).
        frozen: set by ``freeze()``; a frozen backbone stays in eval mode even under ``.train()``.
    """

    name: str
    family: str
    preset: str
    embed_dim: int
    crop_size: int
    patch_size: int
    tubelet_size: int
    is_random: bool
    path: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False
        self._fingerprint: str | None = None

    # ----------------------------------------------------------------- geometry
    def token_grid(self, num_frames: int) -> tuple[int, int, int]:
        """``(T / tubelet, crop / patch, crop / patch)``: the token layout for a clip of ``num_frames``."""
        side = self.crop_size // self.patch_size
        return num_frames // self.tubelet_size, side, side

    def num_tokens(self, num_frames: int) -> int:
        """N for a clip of ``num_frames`` frames at this backbone's crop."""
        t, h, w = self.token_grid(num_frames)
        return t * h * w

    def check_input(self, video: Tensor) -> None:
        """Refuse inputs the encoder would accept but misread.

        V-JEPA 2's RoPE grid is fixed by ``crop_size // patch_size``: another spatial size runs
        without error and silently puts every token at the wrong position. So: ``[B, T, 3, crop, crop]``,
        floating point (preprocessed), T a positive multiple of the tubelet size.
        """
        if not isinstance(video, Tensor) or video.ndim != 5:
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"{self.name}: expected video [B, T, C, H, W], got {shape}")
        _, t, c, h, w = video.shape
        if c != 3:
            raise ValueError(f"{self.name}: expected 3 colour channels in dim 2 of [B, T, C, H, W], got C={c} "
                             f"(shape {tuple(video.shape)}; frames as [T, H, W, 3] need preprocess_frames first)")
        if h != self.crop_size or w != self.crop_size:
            raise ValueError(f"{self.name}: expected {self.crop_size}x{self.crop_size} frames, got {h}x{w}; "
                             f"the positional grid is fixed at crop_size={self.crop_size} and another size would "
                             f"run with wrong token positions. Preprocess with crop={self.crop_size}.")
        if t < 1 or t % self.tubelet_size:
            raise ValueError(f"{self.name}: the number of frames must be a positive multiple of the tubelet size "
                             f"{self.tubelet_size}, got T={t}")
        if not video.is_floating_point():
            raise ValueError(f"{self.name}: expected a float, preprocessed video, got {video.dtype}; "
                             f"use cvsjepa.data.transforms.preprocess_frames")

    # ----------------------------------------------------------------- running
    @abstractmethod
    def _encode(self, video: Tensor) -> Tensor:
        """Subclass hook: checked ``[B, T, 3, crop, crop]`` -> tokens ``[B, N, D]``."""

    def forward(self, video: Tensor) -> Tensor:
        """``video [B, T, 3, crop, crop]`` float, preprocessed -> tokens ``[B, N, D]`` (autograd on)."""
        self.check_input(video)
        return self._encode(video)

    def extract(self, video: Tensor) -> Tensor:
        """Frozen forward: ``[B, T, 3, crop, crop]`` -> float32 tokens ``[B, N, D]`` with no graph.

        Runs under ``inference_mode`` (no autograd bookkeeping at all) and bf16 autocast on CUDA.
        Inference tensors cannot be saved for backward, so the result is cloned *after* leaving
        inference mode: it is then an ordinary constant that a trainable head can consume.
        """
        self.check_input(video)
        with torch.inference_mode():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.is_cuda):
                tokens = self._encode(video)
            tokens = tokens.float()
        return tokens.clone()

    def freeze(self) -> "Backbone":
        """eval mode, no parameter trainable, ``frozen = True``. Returns self for chaining."""
        self.requires_grad_(False)
        self.frozen = True
        self._fingerprint = None
        self.eval()
        return self

    def train(self, mode: bool = True) -> "Backbone":
        # A frozen encoder is a fixed feature function: `model.train()` on the whole classifier
        # must not switch on its dropout / drop-path, or stored and live tokens would differ.
        return super().train(mode and not self.frozen)

    # ----------------------------------------------------------------- identity
    def fingerprint_tensors(self) -> dict[str, Tensor]:
        """The tensors that determine the tokens (default: the whole state dict)."""
        return self.state_dict()

    def fingerprint_config(self) -> dict[str, Any]:
        """Architecture fields that change the tokens for identical weights (e.g. head count)."""
        return {"crop_size": self.crop_size, "patch_size": self.patch_size, "tubelet_size": self.tubelet_size}

    def weights_fingerprint(self) -> str:
        """16 hex digits of sha256 over the architecture fields and every token-relevant tensor
        (name, dtype, shape, bytes; sorted by name). Same weights + same shape -> same string, on
        any device. Cached while frozen (hashing ViT-L's 1.2 GB costs about a second)."""
        trainable = any(p.requires_grad for p in self.parameters())
        if self._fingerprint is not None and self.frozen and not trainable:
            return self._fingerprint
        h = hashlib.sha256()
        h.update(json.dumps({"family": self.family, **self.fingerprint_config()}, sort_keys=True).encode())
        for key, tensor in sorted(self.fingerprint_tensors().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        fp = h.hexdigest()[:16]
        if self.frozen and not trainable:
            self._fingerprint = fp
        return fp

    def num_params(self) -> int:
        """Parameters that produce the tokens (subclasses exclude unused parts, e.g. a predictor)."""
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for run directories, checkpoints and the feature store."""
        return {
            "name": self.name, "family": self.family, "preset": self.preset, "embed_dim": self.embed_dim,
            "crop_size": self.crop_size, "patch_size": self.patch_size, "tubelet_size": self.tubelet_size,
            "params": self.num_params(), "random_weights": self.is_random, "path": self.path,
        }
