"""How the backbone may change during training: frozen, last-N blocks unfrozen, or LoRA adapters.

- ``frozen``: ``eval()``, no gradients (the tokens can come from a feature store).
- ``unfreeze``: everything frozen except the last ``unfreeze_last`` encoder blocks (exp8: 2, exp9
  stage 2: 1); the final norm and the patch embedding stay frozen.
- ``lora``: peft LoRA on the encoder's attention projections only. The log's ``q_proj/v_proj`` are
  ``query/value`` in transformers; a bare ``["query", "value"]`` target would also wrap the
  predictor, which classification never runs (the log's 1.87 M counted those 294,912 dead
  parameters), so targets are anchored to ``encoder.layer.N.attention``.

Layer-wise LR decay: block i of L gets ``lr * llrd ** (L - 1 - i)``, so earlier blocks move less.
"""

from __future__ import annotations

import logging
import re
import warnings

import torch
from torch import nn

from ..config import AdaptConfig
from ..errors import ConfigError

log = logging.getLogger("cvsjepa")


def encoder_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's transformer blocks, first to last."""
    if hasattr(backbone, "encoder_blocks"):
        return backbone.encoder_blocks()
    model = getattr(backbone, "model", None)
    encoder = getattr(model, "encoder", None)
    blocks = getattr(encoder, "layer", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"backbone {getattr(backbone, 'name', type(backbone).__name__)} does not expose its "
                          f"encoder blocks, so adapt.mode other than 'frozen' is not supported for it")
    return blocks


_ROLE_ALIASES = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "proj": "output", "o_proj": "output"}


def lora_target_regex(targets: list[str], attention_modules: dict[str, str] | None = None,
                      blocks_path: str = "encoder.layer") -> str:
    """Full-name regex for peft: the encoder blocks' attention projections only (never the predictor).

    ``targets`` are roles (query, key, value, output; the log's q_proj/k_proj/v_proj are accepted),
    mapped to each family's module paths through the backbone's ``attention_modules``, under its
    ``blocks_path`` (``encoder.layer``; DINOv3 ``model.layer``).
    """
    modules = attention_modules or {"query": "attention.query", "key": "attention.key",
                                    "value": "attention.value", "output": "attention.proj"}
    paths = []
    for t in targets:
        role = _ROLE_ALIASES.get(t, t)
        if role not in modules:
            raise ConfigError(f"adapt.lora_targets: {t!r} is not one of {', '.join(modules)} "
                              f"(or the log's q_proj, k_proj, v_proj)")
        paths.append(re.escape(modules[role]))
    return rf"(.*\.)?{re.escape(blocks_path)}\.\d+\.({'|'.join(paths)})"


def apply_adaptation(backbone: nn.Module, cfg: AdaptConfig, mode: str | None = None,
                     unfreeze_last: int | None = None) -> nn.Module:
    """Freeze the backbone, then open the parts that ``mode`` trains. Returns the backbone."""
    mode = mode or cfg.mode
    backbone.freeze()
    if mode == "frozen":
        return backbone
    blocks = encoder_blocks(backbone)
    if cfg.drop_path > 0:
        set_drop_path(blocks, cfg.drop_path)
    if mode == "unfreeze":
        n = cfg.unfreeze_last if unfreeze_last is None else unfreeze_last
        if not 1 <= n <= len(blocks):
            raise ConfigError(f"adapt.unfreeze_last={n} must be between 1 and the {len(blocks)} encoder blocks")
        for block in list(blocks)[-n:]:
            block.requires_grad_(True)
    elif mode == "lora":
        add_lora(backbone, cfg)
    else:
        raise ConfigError(f"unknown adapt.mode {mode!r}")
    backbone.frozen = False
    backbone.train()
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(backbone)
    return backbone


def add_lora(backbone: nn.Module, cfg: AdaptConfig) -> None:
    from peft import LoraConfig, get_peft_model

    targets = lora_target_regex(cfg.lora_targets, getattr(backbone, "attention_modules", None),
                                getattr(backbone, "blocks_path", "encoder.layer"))
    lora_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, bias="none")
    try:
        with warnings.catch_warnings():  # peft probes a deprecated transformers attribute
            warnings.simplefilter("ignore", FutureWarning)
            backbone.model = get_peft_model(backbone.model, lora_cfg)
    except ValueError as e:  # peft: "Target modules ... not found in the base model"
        roles = getattr(backbone, "attention_modules", {})
        raise ConfigError(f"adapt.lora_targets={cfg.lora_targets} match no encoder attention module of "
                          f"{backbone.name} (its roles: {', '.join(f'{r}={m}' for r, m in roles.items())})") from e
    for n, p in backbone.named_parameters():
        p.requires_grad_("lora_" in n)


def has_lora(backbone: nn.Module | None) -> bool:
    return backbone is not None and hasattr(getattr(backbone, "model", None), "peft_config")


def set_drop_path(blocks: nn.ModuleList, rate: float) -> None:
    """Stochastic depth, linearly from 0 at the first block to ``rate`` at the last (as V-JEPA 2 builds it)."""
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2DropPath

    n = len(blocks)
    for i, block in enumerate(blocks):
        if hasattr(block, "drop_path"):
            block.drop_path = VJEPA2DropPath(rate * i / (n - 1) if n > 1 else 0.0)


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    model = backbone.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path


def backbone_param_groups(backbone: nn.Module, lr: float, llrd: float, weight_decay: float) -> list[dict]:
    """One AdamW group per block with a trainable parameter (LLRD), split decay / no-decay."""
    blocks = list(encoder_blocks(backbone))
    depth = len(blocks)
    groups = []
    seen: set[int] = set()
    for i, block in enumerate(blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        seen |= {id(p) for p in params}
        groups += _decay_split(params, lr * llrd ** (depth - 1 - i), weight_decay, f"backbone.{i}")
    rest = [p for p in backbone.parameters() if p.requires_grad and id(p) not in seen]
    groups += _decay_split(rest, lr * llrd ** depth, weight_decay, "backbone.other")
    return groups


def _decay_split(params: list[torch.nn.Parameter], lr: float, wd: float, name: str) -> list[dict]:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    out = []
    if decay:
        out.append({"params": decay, "lr": lr, "weight_decay": wd, "name": name})
    if no_decay:
        out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"})
    return out


def params_breakdown(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by part: head, seg_head (when present), lora, backbone (unfrozen blocks)."""
    out = {"head": 0, "lora": 0, "backbone": 0}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = n.split(".", 1)[0]
        part = part if part in ("head", "seg_head") else "lora" if "lora_" in n else "backbone"
        out[part] = out.get(part, 0) + p.numel()
    return out
