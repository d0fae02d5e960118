"""V-JEPA 2 encoders through ``transformers.VJEPA2Model``, from local Hugging Face directories.

Shapes (``PRESETS``) follow the released checkpoints (reference: shared/reference/vjepa2.md):

=========  ======  ======  =====  =========  =====  ===============
preset     hidden  layers  heads  mlp ratio  crop   encoder params
=========  ======  ======  =====  =========  =====  ===============
vitl       1024    24      16     4          256    303.9 M
vith       1280    32      16     4          256    631.6 M
vitg       1408    40      22     48/11      256    1012.2 M
vitg384    1408    40      22     48/11      384    1012.2 M
tiny       96      2       4      2          64     random, for tests and the demo
=========  ======  ======  =====  =========  =====  ===============

All use patch 16, tubelet 2 and ``frames_per_clip=64`` as the HF conversions do. frames_per_clip
only sizes the RoPE depth grid, and frame positions extrapolate (``frame = id // tokens_per_frame``),
so clips of any even length work; the *spatial* size must equal ``crop_size`` (checked).

Weights: ``backbone.path`` = a local directory with ``config.json`` (``model_type: vjepa2``) and
``model.safetensors`` (or a sharded ``model.safetensors.index.json``), e.g. a snapshot of
``facebook/vjepa2-vitl-fpc64-256``. Nothing is downloaded. The directory's config wins over
``backbone.preset``; the actual shape is what ``describe()`` records. Meta's ``.pt`` checkpoints
need converting first (fused qkv, different names); they are never ``torch.load``-ed here.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import VJEPA2Config, VJEPA2Model

from ..config import BackboneConfig
from ..errors import CheckpointError, ConfigError
from .base import Backbone

log = logging.getLogger(__name__)

FAMILY = "vjepa2"
_HF_GEOMETRY = dict(crop_size=256, patch_size=16, tubelet_size=2, frames_per_clip=64)

PRESETS: dict[str, dict[str, Any]] = {
    # Tests and the demo: runs a 16-frame clip in milliseconds on a CPU. hidden/heads = 24 so each
    # RoPE axis gets 8 dims (>= 2 needed).
    "tiny": dict(crop_size=64, patch_size=16, frames_per_clip=8, tubelet_size=2, hidden_size=96,
                 num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2.0,
                 pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1),
    "vitl": dict(**_HF_GEOMETRY, hidden_size=1024, num_attention_heads=16, num_hidden_layers=24, mlp_ratio=4.0),
    "vith": dict(**_HF_GEOMETRY, hidden_size=1280, num_attention_heads=16, num_hidden_layers=32, mlp_ratio=4.0),
    "vitg": dict(**_HF_GEOMETRY, hidden_size=1408, num_attention_heads=22, num_hidden_layers=40,
                 mlp_ratio=48 / 11),
    "vitg384": dict(**{**_HF_GEOMETRY, "crop_size": 384}, hidden_size=1408, num_attention_heads=22,
                    num_hidden_layers=40, mlp_ratio=48 / 11),
}
HF_REPOS = {"vitl": "facebook/vjepa2-vitl-fpc64-256", "vith": "facebook/vjepa2-vith-fpc64-256",
            "vitg": "facebook/vjepa2-vitg-fpc64-256", "vitg384": "facebook/vjepa2-vitg-fpc64-384"}
RANDOM_SEED = 0  # every random-weight build uses it, so "tiny" is one fixed model everywhere

# Fields that define the encoder's shape (preset matching) and, with the weights, its tokens.
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
               "crop_size", "patch_size", "tubelet_size")
_TOKEN_KEYS = _SHAPE_KEYS + ("layer_norm_eps", "hidden_act", "qkv_bias", "in_chans")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def preset_config(preset: str, attn_implementation: str = "sdpa") -> VJEPA2Config:
    """The ``VJEPA2Config`` of a named preset; ConfigError naming ``backbone.preset`` if unknown."""
    if preset not in PRESETS:
        raise ConfigError(f"backbone.preset={preset!r} is not one of {', '.join(PRESETS)}")
    return VJEPA2Config(**PRESETS[preset], attn_implementation=attn_implementation)


def match_preset(config: VJEPA2Config) -> str:
    """Name of the preset with this encoder shape, or ``"custom"``."""
    for name, kw in PRESETS.items():
        ref = VJEPA2Config(**kw)
        if all(abs(float(getattr(config, k)) - float(getattr(ref, k))) < 1e-6 for k in _SHAPE_KEYS):
            return name
    return "custom"


@lru_cache(maxsize=None)
def _encoder_params(preset: str) -> int:
    # Count on the meta device: shapes only, no memory, so ViT-g costs nothing to count.
    with torch.device("meta"):
        model = VJEPA2Model(VJEPA2Config(**PRESETS[preset]))
    return sum(p.numel() for p in model.encoder.parameters())


def list_vjepa2_presets() -> list[dict[str, Any]]:
    """One row per preset: name, family, params (encoder only), embed dim, tokens per 16-frame clip."""
    rows = []
    for name, kw in PRESETS.items():
        side = kw["crop_size"] // kw["patch_size"]
        rows.append({
            "name": name, "family": FAMILY, "params": _encoder_params(name),
            "params_scope": "encoder only (predictor excluded)",
            "embed_dim": kw["hidden_size"], "layers": kw["num_hidden_layers"], "heads": kw["num_attention_heads"],
            "crop_size": kw["crop_size"], "patch_size": kw["patch_size"], "tubelet_size": kw["tubelet_size"],
            "tokens_per_16_frames": (16 // kw["tubelet_size"]) * side * side,
            "weights": "random (built in)" if name == "tiny" else f"local HF dir, e.g. {HF_REPOS[name]}",
        })
    return rows


class VJEPA2Backbone(Backbone):
    """A ``transformers.VJEPA2Model`` used as an encoder; the predictor is kept (so the model
    round-trips through ``save_pretrained``) but never run (``skip_predictor=True``).

    ``self.model`` is the underlying ``VJEPA2Model``; LoRA targets live under
    ``model.encoder.layer.{i}.attention.{query,key,value,proj}``.
    """

    def __init__(self, model: VJEPA2Model, *, path: str = "", is_random: bool, requested_preset: str = ""):
        super().__init__()
        self.model = model
        cfg = model.config
        self.family = FAMILY
        self.preset = match_preset(cfg)
        self.requested_preset = requested_preset or self.preset
        self.embed_dim = int(cfg.hidden_size)
        self.crop_size = int(cfg.crop_size)
        self.patch_size = int(cfg.patch_size)
        self.tubelet_size = int(cfg.tubelet_size)
        self.is_random = is_random
        self.path = path
        self.name = f"{FAMILY}-{self.preset} ({'random weights' if is_random else path})"

    @property
    def config(self) -> VJEPA2Config:
        return self.model.config

    def _encode(self, video: Tensor) -> Tensor:
        return self.model(pixel_values_videos=video, skip_predictor=True).last_hidden_state

    def fingerprint_tensors(self) -> dict[str, Tensor]:
        # Encoder only: the predictor never touches the tokens.
        return {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}

    def fingerprint_config(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in _TOKEN_KEYS}

    def num_params(self) -> int:
        """Encoder parameters only (the predictor, unused here, is excluded)."""
        return sum(p.numel() for p in self.model.encoder.parameters())

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        c = self.config
        d.update(params_scope="encoder only (predictor excluded)", num_layers=int(c.num_hidden_layers),
                 num_heads=int(c.num_attention_heads), mlp_ratio=float(c.mlp_ratio),
                 frames_per_clip=int(c.frames_per_clip), preset_requested=self.requested_preset,
                 attn_implementation=str(c._attn_implementation))
        return d


# ---------------------------------------------------------------------------- loading
def _expected() -> str:
    return ("a local Hugging Face directory with config.json and model.safetensors "
            f"(e.g. a snapshot of {HF_REPOS['vitl']})")


def check_hf_dir(path: str) -> Path:
    """Validate a weights directory before transformers sees it; CheckpointError says what is wrong."""
    p = Path(path).expanduser()
    if p.suffix.lower() in (".pt", ".pth", ".ckpt"):
        missing = "" if p.exists() else " (and the file does not exist)"
        raise CheckpointError(
            f"backbone.path={path} looks like a Meta PyTorch checkpoint{missing}; cvsjepa reads Hugging Face "
            f"directories only. Convert it first with `cvsjepa convert` (not built yet) or point backbone.path "
            f"at {_expected()}. (.pt files are not loaded directly: unpickling can run code.)")
    if not p.exists():
        raise CheckpointError(f"backbone.path={path} does not exist; expected {_expected()}")
    if not p.is_dir():
        raise CheckpointError(f"backbone.path={path} is a file, not a directory; expected {_expected()}")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in backbone.path={path}; expected {_expected()}")
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} is not readable JSON ({e}); re-download or re-save the model") from e
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != FAMILY:
        raise CheckpointError(f"{cfg_file} has model_type={model_type!r}, expected 'vjepa2': backbone.path must "
                              f"hold a V-JEPA 2 model ({_expected()})")
    if not any((p / f).is_file() for f in _WEIGHT_FILES):
        others = sorted(f.name for f in p.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
        hint = (f" (found {', '.join(others)}: cvsjepa reads safetensors only; re-save with "
                f"save_pretrained(..., safe_serialization=True))") if others else ""
        raise CheckpointError(f"no model.safetensors (or model.safetensors.index.json) in backbone.path={path}"
                              f"{hint}; expected {_expected()}")
    return p


def load_hf_model(path: str, attn_implementation: str = "sdpa") -> VJEPA2Model:
    """``VJEPA2Model`` from a local directory, float32, eval mode; refuses partial encoder loads."""
    p = check_hf_dir(path)
    try:
        model, info = VJEPA2Model.from_pretrained(
            str(p), local_files_only=True, attn_implementation=attn_implementation,
            dtype=torch.float32,  # transformers 5 defaults to the file's dtype; fp32 master weights, autocast for speed
            output_loading_info=True)
    except Exception as e:  # corrupt file, shape mismatch between config.json and weights, ...
        raise CheckpointError(f"could not load V-JEPA 2 weights from backbone.path={path}: {type(e).__name__}: "
                              f"{str(e).strip()[:500]} (do config.json and the safetensors belong together?)") from e
    # transformers fills missing weights with a random init and only logs it: a silent partial
    # load would look like a working, merely bad, model. Missing encoder weights are fatal.
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith("encoder."))
    if missing:
        raise CheckpointError(f"backbone.path={path}: {len(missing)} encoder weights are missing from the "
                              f"checkpoint, e.g. {', '.join(missing[:5])}; the directory is incomplete or not a "
                              f"V-JEPA 2 encoder")
    other_missing = sorted(set(info.get("missing_keys", ())) - set(missing))
    if other_missing:
        log.info("%s: %d predictor weights missing (unused: the predictor is skipped)", path, len(other_missing))
    unexpected = sorted(info.get("unexpected_keys", ()))
    if unexpected:
        log.info("%s: ignored %d weights that are not part of VJEPA2Model, e.g. %s", path, len(unexpected),
                 ", ".join(unexpected[:3]))
    return model.eval()


def build_vjepa2(cfg: BackboneConfig, device: torch.device | str | None = None) -> VJEPA2Backbone:
    """Build from ``cfg``: a local HF dir when ``cfg.path`` is set, else a seeded random preset."""
    if cfg.path:
        if cfg.random_weights:
            raise ConfigError(f"backbone.random_weights=true and backbone.path={cfg.path} are both set: "
                              f"pick one (path loads weights, random_weights builds a random model)")
        model = load_hf_model(cfg.path, cfg.attn_implementation)
        backbone = VJEPA2Backbone(model, path=cfg.path, is_random=False, requested_preset=cfg.preset)
        if backbone.preset != cfg.preset:
            log.info("backbone.preset=%s, but %s holds a %s-shaped model: using the directory's shape",
                     cfg.preset, cfg.path, backbone.preset)
    else:
        config = preset_config(cfg.preset, cfg.attn_implementation)
        if cfg.preset != "tiny" and not cfg.random_weights:
            raise ConfigError(
                f"backbone.preset={cfg.preset} needs V-JEPA 2 weights: pass backbone.path=/path/to/hf_dir "
                f"(or backbone.random_weights=true for a random-weight model of the same shape, e.g. for benchmarks)")
        # Built on the CPU under a fixed seed (without touching the caller's RNG): the same
        # preset is the same model on every machine and device, which tests and the feature store need.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = VJEPA2Model(config)
        backbone = VJEPA2Backbone(model, is_random=True, requested_preset=cfg.preset)
    if device is not None:
        backbone.to(device)
    return backbone.eval()  # like from_pretrained: an encoder starts in eval mode; train() when tuning it
