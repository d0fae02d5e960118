"""Named presets of a backbone family: one table of config kwargs per family, and the three things
every family does with it (build the config of a name, name a loaded config, describe each preset
for ``cvsjepa backbones``)."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from ..errors import ConfigError
from ._hf import seeded_build

RANDOM_SEED = 0  # every random-weight build uses it, so a preset's random model is one fixed model everywhere


def check_one_source(cfg: Any) -> None:
    """``backbone.path`` loads weights, ``backbone.random_weights`` builds a random model: not both."""
    if cfg.path and cfg.random_weights:
        raise ConfigError(f"backbone.random_weights=true and backbone.path={cfg.path} are both set: pick one "
                          f"(path loads weights, random_weights builds a random model)")


def random_model(cfg: Any, make: Callable[[], Any], what: str, weights: str) -> Any:
    """A seeded random-weight model of ``cfg.preset``: a ``tiny`` test preset always, a real preset
    only with ``backbone.random_weights=true`` (benchmarks); otherwise the error that asks for
    ``what`` weights at ``backbone.path`` (``weights`` says what to pass)."""
    if cfg.preset != "tiny" and not cfg.random_weights:
        raise ConfigError(f"backbone.preset={cfg.preset} needs {what} weights: pass backbone.path={weights} "
                          f"(or backbone.random_weights=true for a random-weight model of the same shape, e.g. "
                          f"for benchmarks)")
    return seeded_build(make, RANDOM_SEED)


def named_config(presets: Mapping[str, dict], preset: str, make: Callable[..., Any], family: str,
                 attn_implementation: str = "sdpa") -> Any:
    """``make(**presets[preset], attn_implementation=...)``; ConfigError naming ``backbone.preset``."""
    if preset not in presets:
        raise ConfigError(f"backbone.preset={preset!r} is not a {family} preset ({', '.join(presets)})")
    return make(**presets[preset], attn_implementation=attn_implementation)


def match_preset(presets: Mapping[str, dict], config: Any, make: Callable[..., Any], keys: Iterable[str]) -> str:
    """Name of the preset whose config agrees with ``config`` on ``keys`` (floats to 1e-6), or "custom"."""
    keys = tuple(keys)
    for name, kw in presets.items():
        ref = make(**kw)
        if all(_same(getattr(config, k, None), getattr(ref, k, None)) for k in keys):
            return name
    return "custom"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-6
    return a == b


def preset_row(name: str, family: str, kw: dict, *, params: int, params_scope: str, crop: int, tubelet: int,
               clip_frames: int, flops: int, weights: str, fixed_frames: bool = False) -> dict[str, Any]:
    """One row of ``cvsjepa backbones``. ``fixed_frames``: the model runs only at ``clip_frames``
    (no 16-frame token count unless that is 16)."""
    side = crop // kw["patch_size"]
    per_step = side * side
    return {
        "name": name, "family": family, "params": params, "params_scope": params_scope,
        "embed_dim": kw["hidden_size"], "layers": kw["num_hidden_layers"], "heads": kw["num_attention_heads"],
        "crop_size": crop, "patch_size": kw["patch_size"], "tubelet_size": tubelet,
        "clip_frames": clip_frames, "tokens_per_clip": (clip_frames // tubelet) * per_step,
        "tokens_per_16_frames": None if fixed_frames and clip_frames != 16 else (16 // tubelet) * per_step,
        "flops_per_clip": flops, "weights": weights,
    }
