"""The backbone contract every video encoder in cvsjepa honours.

A backbone turns a preprocessed clip ``video [B, T, 3, crop, crop]`` (float, normalised by
``cvsjepa.data.transforms.preprocess_frames``) into patch tokens ``[B, N, D]`` with
``N = num_levels * prod(token_grid(T))``. Token order is level-major, then frame, row, column
(the order V-JEPA 2's Conv3d patchifier flattens in), so heads and diagnostics map token ``i``
back with ``(level, t', h', w') = np.unravel_index(i, token_layout(T))``.

Levels: with ``backbone.layers`` empty (the default) there is one level, the last encoder layer
after the final norm, and ``token_layout(T) == (1, *token_grid(T))``. With ``backbone.layers =
[17, 19, 21, 23]`` (the official multilevel probe of ViT-L) each chosen layer's output gets the
final norm and the levels are concatenated along the token axis: level 0's ``prod(token_grid(T))``
tokens first, then level 1's, ... Layer ``i`` is the output of encoder block ``i`` (0-based), so
``[L - 1]`` equals the default.

Two ways to run it:
* ``forward(video)``: ordinary autograd, for training through the encoder (LoRA, unfreezing).
* ``extract(video)``: the frozen path: ``inference_mode``, bf16 autocast on CUDA, float32 tokens
  that a trainable head can consume and backpropagate through (the tokens are constants).
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def resolve_layers(layers: "list[int] | tuple[int, ...]", num_layers: int) -> tuple[int, ...]:
    """``backbone.layers`` -> sorted block indices in ``[0, num_layers)``; ConfigError names the key.

    Negative indices count from the end (``-1`` = last block). The result is in block order, as
    the official ``out_layers`` produces it whatever order the list was written in.
    """
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ConfigError(f"backbone.layers={list(layers)}: layer indices must be integers, got {i!r}")
        if not -num_layers <= i < num_layers:
            raise ConfigError(f"backbone.layers={list(layers)}: layer {i} is out of range for an encoder with "
                              f"{num_layers} layers (valid: 0..{num_layers - 1}, or -{num_layers}..-1 from the end)")
        out.append(i % num_layers)
    if len(set(out)) != len(out):
        raise ConfigError(f"backbone.layers={list(layers)} names a layer twice (after counting negative "
                          f"indices from the end: {out})")
    return tuple(sorted(out))


class Backbone(nn.Module, ABC):
    """Base class. Subclasses set the attributes below in ``__init__`` and implement ``_encode``.

    Attributes:
        name: honest, human-readable, e.g. ``"vjepa2-tiny (random weights)"``,
            ``"vjepa2-vitl (/data/weights/vjepa2-vitl-fpc64-256)"``.
        family: registry key (``"vjepa2"``); preset: the shape name (``"vitl"``, or ``"custom"``).
        embed_dim: token width D. crop_size / patch_size / tubelet_size: input geometry.
        is_random: True when the weights are a random initialisation (tiny, or random_weights=True).
        path: the weights directory or file ("" for random weights).
        num_layers: encoder depth. layers: the chosen blocks for multilevel tokens, sorted, ``()`` =
            the last one (see the module docstring).
        attention_modules: the attention Linears of one encoder block, as dotted paths relative
            to the block, by role (``query``, ``key``, ``value``, ``output``); e.g. V-JEPA 2's
            ``{"query": "attention.query", ..., "output": "attention.proj"}``. For LoRA targets:
            module names differ between families.
        blocks_path: dotted path of the blocks' ModuleList under ``self.model`` (``encoder.layer``;
            DINOv3: ``model.layer``); LoRA targets are anchored to it, so a predictor is never wrapped.
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
    num_layers: int
    layers: tuple[int, ...] = ()
    attention_modules: dict[str, str] = {"query": "attention.query", "key": "attention.key",
                                         "value": "attention.value", "output": "attention.proj"}
    blocks_path: str = "encoder.layer"

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False
        self._fingerprint: str | None = None

    def _set_identity(self, model: nn.Module, *, preset: str, requested_preset: str, embed_dim: int, crop_size: int,
                      patch_size: int, tubelet_size: int, num_layers: int, layers, is_random: bool, path: str,
                      source: str = "", source_info: dict | None = None) -> None:
        """What every family's ``__init__`` records (the attributes of the class docstring), in one place:
        the wrapped model, its shape and geometry, the chosen layers and an honest name."""
        self.model = model
        self.preset = preset
        self.requested_preset = requested_preset or preset
        self.embed_dim, self.crop_size, self.patch_size = int(embed_dim), int(crop_size), int(patch_size)
        self.tubelet_size, self.num_layers = int(tubelet_size), int(num_layers)
        self.layers = resolve_layers(layers, self.num_layers)
        self.is_random, self.path = is_random, path
        self.source = source or ("random" if is_random else "hf_dir")
        self.source_info = dict(source_info or {})
        self.name = f"{self.family}-{preset} ({'random weights' if is_random else path})"

    # ----------------------------------------------------------------- geometry
    @property
    def num_levels(self) -> int:
        """How many layers' tokens are concatenated (1 unless ``backbone.layers`` names several)."""
        return max(1, len(self.layers))

    def token_grid(self, num_frames: int) -> tuple[int, int, int]:
        """``(T / tubelet, crop / patch, crop / patch)``: the grid of ONE level for a clip of ``num_frames``."""
        side = self.crop_size // self.patch_size
        return num_frames // self.tubelet_size, side, side

    def token_layout(self, num_frames: int) -> tuple[int, int, int, int]:
        """``(num_levels, T', H', W')``; its product is N. Tokens are level-major."""
        return (self.num_levels, *self.token_grid(num_frames))

    def num_tokens(self, num_frames: int) -> int:
        """N for a clip of ``num_frames`` frames at this backbone's crop (all levels)."""
        t, h, w = self.token_grid(num_frames)
        return self.num_levels * t * h * w

    def encoder_blocks(self) -> nn.ModuleList:
        """The transformer blocks, first to last (for unfreezing, LLRD, drop-path): ``blocks_path``
        under ``self.model``, or under the model a PEFT wrapper holds (whose own ``.model`` would
        shadow DINOv3's ``model.layer``)."""
        model = self.model  # type: ignore[attr-defined]
        root = model.get_base_model() if hasattr(model, "get_base_model") else model
        return functools.reduce(getattr, self.blocks_path.split("."), root)

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

    def _run_levels(self, x: Tensor, run_block: Callable[[nn.Module, Tensor], Tensor],
                    norm: Callable[[Tensor], Tensor] | None = None,
                    norm_of: Callable[[int], Callable[[Tensor], Tensor]] | None = None) -> list[Tensor]:
        """Multilevel helper: run the encoder blocks on the embedded tokens ``x``, keep the normed
        output of each chosen block (in block order), and stop after the last chosen block. The
        norm is ``norm`` for every level, or ``norm_of(i)`` for block ``i`` (V-JEPA 2.1 has one per level)."""
        outs = []
        for i, block in enumerate(self.encoder_blocks()):
            x = run_block(block, x)
            if i in self.layers:
                outs.append((norm_of(i) if norm_of is not None else norm)(x))
            if i == self.layers[-1]:
                break
        return outs

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
        """16 hex digits of sha256 over the architecture fields, the multilevel layer choice and
        every token-relevant tensor (name, dtype, shape, bytes; sorted by name). Same weights + same
        shape + same layers -> same string, on any device. Cached while frozen (hashing ViT-L's
        1.2 GB costs about a second)."""
        trainable = any(p.requires_grad for p in self.parameters())
        if self._fingerprint is not None and self.frozen and not trainable:
            return self._fingerprint
        h = hashlib.sha256()
        header = {"family": self.family, **self.fingerprint_config()}
        if self.layers and self.layers != (self.num_layers - 1,):  # [last] gives the default tokens
            header["layers"] = list(self.layers)
        h.update(json.dumps(header, sort_keys=True).encode())
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
            "num_layers": self.num_layers, "layers": list(self.layers), "num_levels": self.num_levels,
            "token_order": "level, frame, row, column",
        }
