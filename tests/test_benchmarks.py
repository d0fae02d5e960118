"""The GPU benchmark's script runs end to end (``--smoke``: the tiny model on the CPU) and skips,
naming it, a model this checkout does not have."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_smoke(tmp_path, capsys):
    gpu = _module("gpu")
    res = gpu.main(["--smoke", "--models", "vjepa2:tiny", "vjepa2:no-such-preset", "--json", str(tmp_path / "g.json")])
    out = capsys.readouterr().out
    assert list(res["skipped"]) == ["vjepa2:no-such-preset"] and "no-such-preset: skipped" in out
    (m,) = res["models"]
    assert m["extract"]["clips_per_s"] > 0 and m["tokens_per_clip"] == 2 * 4 * 4  # 4 frames x 64 px, patch 16
    for ckpt in (False, True):
        assert m[f"lora_checkpointing_{ckpt}"]["s_per_step"] > 0
    assert res["threads"]["default_s"] > 0 and res["threads"]["one_s"] > 0
    assert (tmp_path / "g.json").is_file() and "LoRA step with gradient checkpointing" in out
    assert dict(gpu.PEAK_BF16)["H100"] == 989.0 and dict(gpu.PEAK_BF16)["A100"] == 312.0
