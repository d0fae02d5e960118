"""Typed run configuration: dataclasses, YAML overlays, dotted ``key=value`` overrides.

A config is built in three layers, later ones winning:

1. the dataclass defaults below (the log's Experiment 2 values where the log gives them);
2. a YAML file, which may name a ``base:`` YAML (relative to itself) that it overlays;
3. dotted overrides from the command line, e.g. ``train.epochs=2 data.root=/data/endoscapes``.

Every layer is merged in OmegaConf *struct* mode, so an unknown or misspelt key is an error that
names the key (and the closest valid one). Values are type-checked against the dataclass fields.

This file is long because every option is declared here once, with the comment that is its user-facing
documentation, and the checks that types alone cannot express sit next to them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .criteria import CRITERIA
from .errors import ConfigError

CONFIG_VERSION = 1

# The choices of every enumerated key, defined once: the dataclass fields below are typed with these,
# OmegaConf refuses any other value, and the modules that act on a key read its choices from here
# (``typing.get_args``). Registries (heads, losses, backbone families) are checked against them in tests.
DataFormat = Literal["auto", "endoscapes", "sages2024"]
DataSource = Literal["auto", "coco", "csv"]
FrameSource = Literal["auto", "video", "frames"]
TargetMode = Literal["hard", "soft"]
BadSamplePolicy = Literal["error", "skip"]
BackboneFamily = Literal["vjepa2", "vjepa21", "videomae", "dinov2", "dinov3"]  # = backbones.registry.FAMILIES
AttnImplementation = Literal["sdpa", "eager"]
ClipHeadType = Literal["attentive", "linear"]  # heads over a clip's tokens
TemporalHeadType = Literal["temporal_gated", "temporal_gru"]  # heads over a keyframe's history of per-second embeddings
HeadType = Literal[ClipHeadType, TemporalHeadType]  # = heads.registry.HEADS
LossType = Literal["bce", "focal"]
AdaptMode = Literal["frozen", "unfreeze", "lora"]
Stage2Mode = Literal["unfreeze", "lora"]
SamplerType = Literal["random", "balanced"]
NonFinitePolicy = Literal["error", "skip"]
StoreDtype = Literal["float16", "bfloat16", "float32", "int8", "float8_e4m3"]
StorePool = Literal["none", "avg2x2"]
SecondPoolerKind = Literal["mean", "run"]  # how extract pools a second's clip tokens (heads/pooler.py)
MaskSource = Literal["auto", "semseg", "coco"]
# Operating-point policies (evaluate/operating_points.py: POLICIES), for `predict --policy` and
# `evaluate --policy`: not a config key, but its choices are defined here once like the others.
DecisionPolicy = Literal["balanced", "specificity", "precision", "sensitivity"]
# How `evaluate --time-to-cvs` gets per-second probabilities (evaluate/time_to_cvs.py).
TimeToCvsMethod = Literal["seconds", "keyframes", "off"]
DataView = Literal["center", "letterbox", "three_crops"]
PosEmbed = Literal["none", "learned"]
SegDecoderType = Literal["coarse", "fine"]
# Experiment trackers (tracking/: TRACKERS); csv is the run directory's own metrics.csv, always written.
TrackerName = Literal["csv", "tensorboard", "mlflow", "wandb"]
# `cvsjepa export --format` (export/): not a config key; its choices are defined here once like the others.
ExportFormat = Literal["safetensors-bundle", "onnx"]


@dataclass
class DataConfig:
    root: str = ""  # dataset root (Endoscapes2023 or SAGES CVS Challenge 2024), or a `cvsjepa synth` output folder
    format: DataFormat = "auto"  # auto | endoscapes | sages2024: the dataset's layout; auto = recognised from the files
    source: DataSource = "auto"  # Endoscapes: auto | coco | csv: where keyframe labels are read from
    frame_source: FrameSource = "auto"  # SAGES: auto | video | frames: decode clips from the mp4s, or frames/ folders
    # SAGES: share of the train videos drawn (seeded by `seed`) into the val split (and into test when
    # the copy has no test split); the run records the draw in splits.json and later commands reuse it
    val_fraction: float = 0.15
    splits_file: str = ""  # SAGES: a splits.json (as runs hold) fixing each split's videos; "" = official + draw
    frames: int = 16  # frames per clip, sampled from the 1 fps frames; even for V-JEPA's tubelet of 2
    stride: int = 1  # step between clip frames, counted in 1 fps frames
    target: TargetMode = "hard"  # hard = round(rater mean) (majority of 3); soft = the rater mean itself
    train_split: str = "train"  # the dataset's split trained on
    val_split: str = "val"  # the split checkpoints, calibration and thresholds are chosen on
    test_split: str = "test"  # "" = no test split
    on_bad_sample: BadSamplePolicy = "error"  # error | skip (skips are logged with a count)
    num_workers: int = 0  # DataLoader worker processes (0 = load in the main process)
    frame_cache_mb: int = 1024  # RAM for preprocessed frames, reused by overlapping clips and later epochs
    limit_per_split: int = 0  # keep only the first N keyframes of each split (0 = all); for smoke runs
    criteria: list[str] = field(default_factory=lambda: list(CRITERIA))  # display names only
    # field of view the model sees (data/transforms.py): center = V-JEPA 2's center crop (43 % of an
    # 854x480 frame) | letterbox = the whole frame padded to a square (with the ImageNet mean) |
    # three_crops = left/centre/right crops covering the whole frame, their tokens pooled by the head
    # (3x the backbone compute). The same in train, extract, evaluate (TTA) and predict.
    view: DataView = "center"


@dataclass
class BackboneConfig:
    name: BackboneFamily = "vjepa2"  # backbone family in the registry (vjepa2 = V-JEPA 2 and SurgMotion)
    preset: str = "vitl"  # the family's shape, e.g. vitl, surgmotion-vitg; `cvsjepa backbones` lists them all
    path: str = ""  # weights: a local Hugging Face / `cvsjepa convert` directory, or a Meta-format .pt (V-JEPA)
    random_weights: bool = False  # allow random weights for a non-tiny preset (benchmarks only)
    attn_implementation: AttnImplementation = "sdpa"  # sdpa | eager (eager returns attention maps)
    layers: list[int] = field(default_factory=list)  # multilevel: e.g. [17, 19, 21, 23]; empty = last layer


@dataclass
class HeadConfig:
    type: HeadType = "attentive"  # attentive (cross-attention pooling + MLP) | linear (mean-pool probe)
    num_heads: int = 8  # attention heads of the pooling block
    num_queries: int = 1  # learned queries of the pooling block (outputs averaged)
    depth: int = 1  # depth-1 self-attention blocks, then the cross-attention pooling block
    pooler_mlp_ratio: float = 0.0  # MLP inside the pooling block (official probe: 4.0); 0 = none
    mlp_hidden: int = 512  # hidden width of the classifier MLP; 0 = a single Linear
    dropout: float = 0.0  # dropout before the classifier MLP
    # attentive head: positions of its own, added to the tokens it pools (the encoder's RoPE does not
    # reach the head). none | learned = a learned embedding per axis of the token grid (view, level,
    # time, row, column), summed; starts at 0, so it begins as `none` (heads/positions.py). Default
    # none: no measurable difference on the synthetic data (docs/benchmarks.md, 5 seeds, paired)
    pos_embed: PosEmbed = "none"
    # temporal heads (type temporal_gated | temporal_gru, heads/temporal.py) read per-second embeddings
    # from a feature store (features.seconds) instead of a clip's tokens; the output at second t depends
    # only on seconds <= t. A keyframe at t sees every second of the last history_dense seconds (t, t-1,
    # ...), then every history_stride-th second further back, up to history_seconds before t ("multi-scale")
    history_seconds: int = 64  # W: how far back the head sees, in seconds (t itself included)
    history_dense: int = 16  # the most recent seconds, every one of them
    history_stride: int = 4  # then one second in every history_stride, back to t - history_seconds + 1
    temporal_dim: int = 256  # width the per-second embeddings are projected to (head.num_heads must divide it)


@dataclass
class LossConfig:
    type: LossType = "bce"  # bce | focal
    focal_alpha: float = 0.25  # focal: weight of positives (1 - alpha for negatives); exp3 0.25
    focal_gamma: float = 2.0  # focal: (1 - p_t)^gamma down-weights easy examples; exp3 2.0
    pos_weight: list[float] = field(default_factory=list)  # per criterion, e.g. [1, 5, 1] (exp6); empty = none
    label_smoothing: float = 0.0  # targets y -> y * (1 - eps) + eps / 2


@dataclass
class AdaptConfig:
    """How the backbone may change during training. frozen: not at all (features can come from a store)."""
    mode: AdaptMode = "frozen"  # frozen | unfreeze | lora
    unfreeze_last: int = 2  # unfreeze: how many of the last encoder blocks train (exp8: 2)
    lr: float = 1e-5  # learning rate of the unfrozen blocks or the LoRA adapters
    llrd: float = 1.0  # layer-wise LR decay: block i (of L) gets lr * llrd^(L-1-i); 1 = off
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (update scaled by lora_alpha / lora_r)
    lora_dropout: float = 0.1  # dropout on the LoRA branch's input
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])  # encoder attention only
    drop_path: float = 0.0  # stochastic depth in the backbone, linearly increasing with depth
    gradient_checkpointing: bool = False  # recompute block activations in backward to save memory


@dataclass
class Stage2Config:
    """Staged fine-tuning (exp9): after the main (stage 1) training, continue from its best checkpoint."""
    enabled: bool = False  # run stage 2 after stage 1
    epochs: int = 5  # stage 2 epochs
    patience: int = 3  # stage 2 early stopping on val mAP; 0 = never
    mode: Stage2Mode = "unfreeze"  # unfreeze | lora
    unfreeze_last: int = 1  # stage 2 unfreeze: how many of the last encoder blocks train
    backbone_lr: float = 1e-6  # stage 2 learning rate of the backbone (blocks or LoRA)
    lr: float = 1e-5  # head learning rate in stage 2
    batch_size: int = 16  # stage 2 clips per micro-batch
    grad_accum: int = 8  # stage 2 micro-batches per optimiser step


@dataclass
class TrainConfig:
    # Budget of a stage: train.steps optimizer steps if > 0 (exact), else train.epochs epochs, which
    # is extended to train.min_steps on a small dataset (the log's 15 epochs at batch 32 are 3,270
    # steps on Endoscapes2023's 6,960 train keyframes but ~100 on 200). train/build.py: stage_budget.
    epochs: int = 15
    steps: int = 0  # budget in optimizer steps; 0 = use train.epochs (the last epoch is cut at the step)
    batch_size: int = 32  # clips per micro-batch (the global batch under DDP)
    grad_accum: int = 1  # micro-batches per optimiser step (effective batch = batch_size * grad_accum)
    lr: float = 5e-4  # head learning rate
    weight_decay: float = 0.01  # AdamW weight decay of matrices (biases and norms: none)
    warmup_epochs: float = 0.0  # linear warm-up, then cosine decay to min_lr_ratio * lr
    warmup_steps: int = -1  # warm-up in optimizer steps; -1 = use warmup_epochs
    min_lr_ratio: float = 0.0  # the cosine ends at min_lr_ratio * lr
    patience: int = 5  # early stopping: epochs without a better smoothed val mAP; 0 = never stop early
    # no early stop before this many optimizer steps of the stage, and an epoch budget shorter than it
    # is extended to it; -1 = auto: the end of warm-up + 500 steps (the attentive pooler starts as a
    # plain average and needs a few hundred steps to learn where to look)
    min_steps: int = -1
    # early stopping watches the mean val mAP of the last N epochs (a val split with few positives per
    # criterion is noisy); 1 = the raw val mAP. The best checkpoint is chosen on the raw val mAP.
    patience_smoothing: int = 3
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads of the main process; 0 = one per usable core left after data workers (1 on <= 2 cores)
    eval_test: bool = True  # score the best checkpoint on the test split at the end
    sampler: SamplerType = "random"  # random | balanced (WeightedRandomSampler, exp4)
    mixup_alpha: float = 0.0  # MixUp Beta(alpha, alpha); 0 = off (pixels in the loop, tokens from a store)
    cutmix_alpha: float = 0.0  # CutMix Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed when MixUp/CutMix is on
    on_nonfinite: NonFinitePolicy = "error"  # error: stop naming the step, samples and last good checkpoint | skip the batch
    # experiment trackers that also receive the config, every metrics.csv column per epoch, the final
    # test metrics and the plots, offline in the run directory: [csv] (metrics.csv only) or e.g.
    # [csv, tensorboard, mlflow, wandb]; each but csv is an extra: pip install 'cvsjepa[tensorboard]'
    loggers: list[TrackerName] = field(default_factory=lambda: ["csv"])
    tracker_project: str = "cvsjepa"  # the MLflow experiment and the W&B project the run is logged under
    mlflow_uri: str = ""  # MLflow tracking URI; "" = a local SQLite store in RUN/mlflow/ (nothing leaves the machine)


@dataclass
class FeaturesConfig:
    store: str = ""  # feature store folder: `cvsjepa extract` writes it, `train` reads tokens from it when set
    # how tokens are stored: float16 | bfloat16 | float32 as such; int8 | float8_e4m3 with one float32
    # scale per token (about half of float16's bytes; read back as float32; see docs/feature_store.md)
    dtype: StoreDtype = "float16"
    pool: StorePool = "none"  # none | avg2x2: 2x2 spatial average pooling of the token grid (4x less storage)
    views: int = 1  # deterministic spatial views per clip (1 = the center crop), for test-time augmentation
    splits: list[str] = field(default_factory=list)  # splits to extract; empty = data.train/val/test_split
    shard_clips: int = 256  # clips per shard file
    batch_size: int = 8  # clips per backbone forward during extraction
    # extract also stores one embedding per 1 fps second of every video of the extracted splits: the
    # causal clip ending at that second (as predict sees it), pooled; what temporal heads train on
    seconds: bool = False
    # how a second's clip tokens become one embedding: mean = their mean | run = the pooled query of
    # features.pooler_run's head (its representation before the classifier MLP), a stage-1 clip model
    second_pooler: SecondPoolerKind = "mean"
    pooler_run: str = ""  # second_pooler=run: the stage-1 run directory (or its checkpoints/best)


@dataclass
class SweepConfig:
    """`cvsjepa sweep`: K = len(lrs) * len(weight_decays) heads trained at once from a feature store."""
    # head learning rates (the official V-JEPA 2 grid)
    lrs: list[float] = field(default_factory=lambda: [5e-3, 3e-3, 1e-3, 3e-4, 1e-4])
    weight_decays: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.4, 0.8])  # crossed with lrs


@dataclass
class SegConfig:
    """Multi-task segmentation (exp8): a light decoder on the keyframe's patch tokens."""
    enabled: bool = False  # train a segmentation decoder next to the CVS head
    weight: float = 0.5  # total loss = CVS loss + weight * segmentation cross-entropy
    # classes kept, in order, by name (seg_label_map.txt) or by id of the default Endoscapes map
    # (0 background, 1 cystic_plate, 2 calot_triangle, 3 cystic_artery, 4 cystic_duct, 5 gallbladder,
    # 6 tool); the dataset's seg_label_map.txt translates names to its mask values. Others ->
    # background, 255 stays ignore. The log's 5: [0, 1, 2, 3, 4]; all 7: [0, 1, 2, 3, 4, 5, 6]
    classes: list[Any] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    decoder_dim: int = 256  # channels of the segmentation decoder
    # coarse = two x2 upsamplings of the keyframe's token grid, then bilinear (a 4x4 grid gives 16x16) |
    # fine = every multilevel layer fused, and each token decoded to its own patch of pixels (pixel
    # shuffle), so structures thinner than a token (the cystic artery and duct) can appear
    decoder: SegDecoderType = "coarse"
    # where masks come from: semseg = semseg/{vid}_{frame}.png; coco = the instance masks (RLE or
    # polygons) of {train,val,test}_seg/annotation_coco.json; auto = the PNG when there is one, else COCO
    masks: MaskSource = "auto"


@dataclass
class RunConfig:
    version: int = CONFIG_VERSION  # config format version; a file of another version is refused
    name: str = "run"  # the run's name (auto-named run directories start with it)
    description: str = ""  # free text kept with the run (config.yaml, the model card)
    seed: int = 0  # seeds weights, batches, augmentation and (SAGES) the val draw
    out: str = ""  # run directory; empty = runs/<name>-<timestamp>
    resume: bool = False  # continue the run in `out` from its last complete epoch (same config required)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    train: TrainConfig = field(default_factory=TrainConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seg: SegConfig = field(default_factory=SegConfig)


# Group keys that accept a bare string as shorthand: `backbone=tiny` means `backbone.preset=tiny`.
_SHORTHANDS = {"backbone": "preset", "head": "type", "loss": "type"}

def choices(key: str) -> tuple[str, ...]:
    """The allowed values of an enumerated key (e.g. ``"loss.type"`` -> ``("bce", "focal")``), else ()."""
    cls: Any = RunConfig
    for part in key.split("."):
        if not is_dataclass(cls):
            return ()
        hints = get_type_hints(cls)
        if part not in hints:
            return ()
        cls = hints[part]
    if get_origin(cls) is list:  # list[Literal[...]]: the choices of each item
        cls = get_args(cls)[0]
    return tuple(get_args(cls)) if get_origin(cls) is Literal else ()


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node[k], full + "."))
    return keys


def _unknown_key_error(key: str, where: str, schema: DictConfig) -> ConfigError:
    valid = _all_keys(schema)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}.{hint} "
                       f"Run `cvsjepa config-keys` to list every key.")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, full + "."))
        else:
            out[full] = v
    return out


def _merge(cfg: DictConfig, updates: dict, where: str) -> DictConfig:
    """Merge a plain dict into the structured config, naming the offending key on error."""
    schema = OmegaConf.structured(RunConfig)
    for key, value in _flatten(updates).items():
        head, _, rest = key.partition(".")
        if not rest and head in _SHORTHANDS and isinstance(value, str):
            key = f"{head}.{_SHORTHANDS[head]}"
            if head == "backbone":  # a preset switch drops a stale weights path
                OmegaConf.update(cfg, "backbone.path", "", merge=True)
        if OmegaConf.select(schema, key, default="__missing__") == "__missing__":
            raise _unknown_key_error(key, where, schema)
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except ConfigKeyError as e:
            raise _unknown_key_error(key, where, schema) from e
        except OmegaConfBaseException as e:
            allowed = choices(key)
            if allowed:
                each = "each item of " if isinstance(value, list) else ""
                raise ConfigError(f"{key}={value!r}: {each}{key} must be one of {', '.join(allowed)} (in {where})") from e
            expected = type(OmegaConf.select(schema, key)).__name__
            raise ConfigError(f"bad value for '{key}' in {where}: {value!r} "
                              f"(expected {expected})") from e
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path} includes itself through 'base:'")
    try:
        data = _floats_in(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_yaml((path.parent / base), seen + (path.resolve(),))
    return _deep_update(parent, data)


def _floats_in(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _floats_in(v) for k, v in node.items()}
    return _yaml11_float(node)


def _deep_update(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def _yaml11_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; learning rates are written that way."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            return value
    if isinstance(value, list):
        return [_yaml11_float(v) for v in value]
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=2", "data.root=/x"]`` -> ``{"train.epochs": 2, "data.root": "/x"}``.

    Values are parsed as YAML scalars/lists (``2`` -> int, ``[1,5,1]`` -> list, ``null`` -> None).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or " " in key:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=2)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = _yaml11_float(value)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML at ``path`` (with its ``base:`` chain), then dotted overrides."""
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        data = _read_yaml(Path(path))
        version = data.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config {path} has version {version}; this cvsjepa reads version "
                              f"{CONFIG_VERSION}. Update the file (see docs/architecture.md, 'Configs').")
        cfg = _merge(cfg, data, str(path))
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "command-line overrides")
    run_cfg: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(run_cfg)
    return run_cfg


def validate(cfg: RunConfig) -> None:
    """Checks that types alone cannot express; each message names the key."""
    flat = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))  # type: ignore[arg-type]
    positive = ["data.frames", "data.stride", "train.epochs", "train.batch_size", "train.grad_accum"]
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {flat[key]}")
    if cfg.train.threads < 0:
        raise ConfigError(f"train.threads must be >= 0 (0 = chosen from the usable cores), got {cfg.train.threads}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.train.lr}")
    _validate_budget(cfg.train)
    if cfg.loss.pos_weight and len(cfg.loss.pos_weight) != 3:
        raise ConfigError(f"loss.pos_weight needs one weight per criterion (3), got {cfg.loss.pos_weight}")
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {cfg.loss.label_smoothing}")
    if cfg.features.store and cfg.adapt.mode != "frozen":
        raise ConfigError(f"features.store reads stored tokens, so the backbone cannot change: it needs "
                          f"adapt.mode=frozen (got {cfg.adapt.mode}); drop features.store to train through it")
    if cfg.features.store and cfg.stage2.enabled:
        raise ConfigError("stage2 fine-tunes the backbone, so it cannot read a feature store; drop features.store")
    if cfg.seg.enabled:
        if cfg.features.store:
            raise ConfigError("seg.enabled needs the keyframe's masks next to its tokens; train it without features.store")
        if cfg.train.mixup_alpha or cfg.train.cutmix_alpha:
            raise ConfigError("seg.enabled with MixUp/CutMix would mix masks too; turn one of them off")
        classes = cfg.seg.classes
        if (not classes or classes[0] not in (0, "background") or len(set(map(str, classes))) != len(classes)
                or not all(isinstance(c, str) and c or isinstance(c, int) and c >= 0 for c in classes)):
            raise ConfigError(f"seg.classes must be class names or ids, start with background (0) and not "
                              f"repeat, got {classes}")
        if cfg.data.view == "three_crops":
            raise ConfigError("seg.enabled with data.view=three_crops would score overlapping crops twice; use "
                              "data.view=center or letterbox for multi-task training")
    _validate_temporal(cfg)
    if cfg.features.views > 1 and cfg.data.view != "center":
        raise ConfigError(f"features.views={cfg.features.views} shifts the center crop (test-time views); with "
                          f"data.view={cfg.data.view} the model already sees the whole frame: set features.views=1")
    if cfg.resume and not cfg.out:
        raise ConfigError("resume=true needs out=<the run directory to continue>")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if len(cfg.data.criteria) != 3:
        raise ConfigError(f"data.criteria must name the 3 CVS criteria, got {cfg.data.criteria}")


def is_temporal(head_type: str) -> bool:
    """Whether ``head.type`` reads per-second histories (a temporal head) rather than clip tokens."""
    return head_type in get_args(TemporalHeadType)


def _validate_temporal(cfg: RunConfig) -> None:
    """Temporal heads train from per-second embeddings in a feature store, two-stage."""
    h, f = cfg.head, cfg.features
    if f.seconds and f.second_pooler == "run" and not f.pooler_run:
        raise ConfigError("features.second_pooler=run pools each second with a trained run's head: name it with "
                          "features.pooler_run=RUN (a `cvsjepa train` run directory)")
    if not is_temporal(h.type):
        return
    if not f.store or not f.seconds:
        raise ConfigError(f"head.type={h.type} trains on per-second embeddings: set features.seconds=true and "
                          f"features.store=DIR (written by `cvsjepa extract` with the same settings)")
    if cfg.train.mixup_alpha or cfg.train.cutmix_alpha:
        raise ConfigError(f"head.type={h.type}: MixUp/CutMix would mix histories of different lengths; turn them off")
    for key, value, low in (("head.history_seconds", h.history_seconds, 1), ("head.history_dense", h.history_dense, 1),
                            ("head.history_stride", h.history_stride, 1), ("head.temporal_dim", h.temporal_dim, 1)):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if h.history_dense > h.history_seconds:
        raise ConfigError(f"head.history_dense={h.history_dense} must be <= head.history_seconds={h.history_seconds}")


def _validate_budget(t: TrainConfig) -> None:
    for key, value, low in (("train.steps", t.steps, 0), ("train.warmup_steps", t.warmup_steps, -1),
                            ("train.min_steps", t.min_steps, -1), ("train.patience_smoothing", t.patience_smoothing, 1),
                            ("train.patience", t.patience, 0)):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if t.warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}")
    if t.warmup_steps >= 0 and t.warmup_epochs > 0:
        raise ConfigError(f"set the warm-up once: train.warmup_steps={t.warmup_steps} and train.warmup_epochs="
                          f"{t.warmup_epochs} are both given (warmup_steps=-1 means 'use warmup_epochs')")


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def from_dict(data: dict, where: str = "saved config") -> RunConfig:
    """Rebuild a config saved by this tool (run directories, checkpoints)."""
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"{where} has config version {version}; this cvsjepa reads {CONFIG_VERSION}")
    cfg = _merge(OmegaConf.structured(RunConfig), data, where)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def all_keys() -> list[tuple[str, Any]]:
    """Every leaf key with its default, for `cvsjepa config-keys`."""
    flat = _flatten(to_dict(RunConfig()))
    return sorted(flat.items())


def changes_from_defaults(cfg: RunConfig) -> list[str]:
    """``["train.epochs = 2  (default 15)", ...]``: the keys whose value differs from the defaults, sorted:
    what ``train`` and ``sweep`` print at their start (the full config goes to ``config.yaml``)."""
    defaults = _flatten(to_dict(RunConfig()))
    return [f"{k} = {v!r}  (default {defaults.get(k)!r})" for k, v in sorted(_flatten(to_dict(cfg)).items())
            if defaults.get(k) != v]
