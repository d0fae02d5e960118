"""GPU benchmark, ready for the day a GPU is lent: one command, a few minutes.

    python benchmarks/gpu.py                       # V-JEPA 2 ViT-L and ViT-g at 16 x 256, 2.1 ViT-L at 384
    python benchmarks/gpu.py --json gpu.json       # also the figures as JSON
    python benchmarks/gpu.py --smoke               # tiny model on the CPU: checks the script runs (a test does)

For each model (``family:preset``; a preset this checkout does not have is skipped, and said so),
random weights of the real shape (``backbone.random_weights=true``; timing does not depend on the
values):

* **extraction**: the frozen forward exactly as ``cvsjepa extract`` runs it (``Backbone.extract``:
  inference mode, bf16 autocast, SDPA attention), clips from pinned host memory copied on a side
  stream while the previous batch computes, tokens back to the host as float16: clips/s, model FLOP
  utilisation against the card's dense bf16 peak (``PEAK_BF16``; unknown card: said so), peak memory;
  ``torch.compile`` of the encoder against eager (first model only unless ``--compile all``);
* **LoRA training step** (adapters r=16 on query/value, the Experiment 2 head, AdamW, bf16 autocast),
  with and without gradient checkpointing: seconds per step and peak memory;
* **threads**: a CPU check of the default thread choice (runtime.py) against one thread, on the head's
  training step over stored ViT-L tokens (issue 22: the default must beat 1 thread on 8+ cores).

Record the printed figures in docs/benchmarks.md with the command and the card.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from cvsjepa.backbones import build_backbone
from cvsjepa.backbones.registry import list_presets
from cvsjepa.config import load_config
from cvsjepa.runtime import auto_threads, usable_cpus

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment; first match wins.
PEAK_BF16 = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
             ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]
DEFAULT_MODELS = ["vjepa2:vitl", "vjepa2:vitg", "vjepa21:vitl"]
GiB = 2 ** 30


def log(msg: str) -> None:
    print(msg, flush=True)


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((tf for frag, tf in PEAK_BF16 if frag in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def find_model(spec: str, frames: int) -> dict | None:
    """The ``cvsjepa backbones`` row of ``family:preset``, or None when this checkout has no such preset."""
    family, _, preset = spec.partition(":")
    return next((r for r in list_presets(frames) if r["family"] == family and r["name"] == preset), None)


def on_device(device: torch.device, build):
    """``build()`` with new tensors created on ``device``: random init of a 1 B-parameter encoder on the
    GPU takes seconds, on the CPU minutes (the values do not matter here). Plain build if that fails."""
    if device.type != "cuda":
        return build()
    try:
        with torch.device(device):
            return build()
    except (RuntimeError, TypeError, ValueError) as e:
        log(f"    (building on the GPU failed: {str(e).splitlines()[0][:120]}; building on the CPU)")
        return build()


def backbone_config(row: dict, extra: list[str] = ()):
    return load_config(None, [f"backbone.name={row['family']}", f"backbone.preset={row['name']}",
                              "backbone.random_weights=true", "backbone.attn_implementation=sdpa", *extra])


# ------------------------------------------------------------------------------------------ extraction
def extraction(backbone, row: dict, device, batch: int, frames: int, steps: int, warmup: int) -> dict:
    """Clips/s of ``backbone.extract`` fed from pinned memory on a side stream (double-buffered)."""
    crop = row["crop_size"]
    pin = device.type == "cuda"
    host = [torch.randn(batch, frames, 3, crop, crop).pin_memory() if pin else torch.randn(batch, frames, 3, crop, crop)
            for _ in range(2)]
    out = torch.empty(batch, backbone.num_tokens(frames), backbone.embed_dim, dtype=torch.float16, pin_memory=pin)
    copy = torch.cuda.Stream(device) if pin else None

    def upload(i: int):
        if copy is None:
            return host[i % 2].to(device), None
        with torch.cuda.stream(copy):
            video = host[i % 2].to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(copy)
        return video, done

    reset_memory(device)
    times = []
    nxt = upload(0)
    for i in range(warmup + steps):
        video, done = nxt
        if done is not None:
            torch.cuda.current_stream(device).wait_event(done)
        t = time.perf_counter()
        nxt = upload(i + 1)  # the next batch crosses the bus while this one computes
        tokens = backbone.extract(video)
        out.copy_(tokens.to(torch.float16), non_blocking=pin)  # to the host, as the store writer needs
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    per_batch = statistics.median(times)
    return {"clips_per_s": batch / per_batch, "batch": batch, "s_per_batch": per_batch,
            "peak_memory_gib": peak_memory(device)}


def compiled_extraction(backbone, row, device, batch, frames, steps, warmup) -> dict:
    """The same with the encoder under ``torch.compile`` (compile time reported apart)."""
    model = backbone.model
    backbone.model = torch.compile(model)
    try:
        t = time.perf_counter()
        extraction(backbone, row, device, batch, frames, 1, 1)  # compiles
        compile_s = time.perf_counter() - t
        return {**extraction(backbone, row, device, batch, frames, steps, warmup), "compile_s": compile_s}
    finally:
        backbone.model = model


# ------------------------------------------------------------------------------------------ LoRA step
def lora_step(row: dict, device, batch: int, frames: int, steps: int, warmup: int, checkpointing: bool) -> dict:
    from cvsjepa.train.build import build_model, classifier_param_groups
    from cvsjepa.train.losses import build_loss

    cfg = backbone_config(row, ["adapt.mode=lora", f"adapt.gradient_checkpointing={str(checkpointing).lower()}",
                                "head.num_heads=8", "head.mlp_hidden=512", f"data.frames={frames}"])
    reset_memory(device)
    model = on_device(device, lambda: build_model(cfg, device))
    model.train()
    opt = torch.optim.AdamW(classifier_param_groups(model, cfg))
    loss_fn = build_loss(cfg.loss).to(device)
    crop = row["crop_size"]
    video = torch.randn(batch, frames, 3, crop, crop, device=device)
    target = torch.randint(0, 2, (batch, 3), device=device).float()
    times = []
    try:
        for i in range(warmup + steps):
            sync(device)
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(model({"video": video}), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    except torch.OutOfMemoryError:
        return {"batch": batch, "oom": True}
    finally:
        del model, opt
    return {"batch": batch, "s_per_step": statistics.median(times), "peak_memory_gib": peak_memory(device)}


# ------------------------------------------------------------------------------------------ threads
def thread_check(steps: int, tokens: int = 512, dim: int = 1024, batch: int = 8) -> dict:
    """CPU: the head's training step over stored ViT-L avg2x2 tokens at the default thread count
    (runtime.auto_threads, no data workers) and at one thread."""
    from cvsjepa.config import HeadConfig
    from cvsjepa.heads import build_head

    torch.manual_seed(0)
    head = build_head(HeadConfig(num_heads=8, mlp_hidden=512), dim)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
    x = torch.randn(batch, tokens, dim).half()
    y = torch.randint(0, 2, (batch, 3)).float()
    before = torch.get_num_threads()
    out = {"usable_cpus": usable_cpus(), "default_threads": auto_threads(0)}
    try:
        for name, n in (("default", out["default_threads"]), ("one", 1)):
            torch.set_num_threads(n)
            times = []
            for i in range(steps + 1):
                t = time.perf_counter()
                torch.nn.functional.binary_cross_entropy_with_logits(head(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i:
                    times.append(time.perf_counter() - t)
            out[f"{name}_s"] = statistics.median(times)
    finally:
        torch.set_num_threads(before)
    out["speedup"] = out["one_s"] / out["default_s"]
    return out


# ------------------------------------------------------------------------------------------ main
def run_model(spec: str, row: dict, device, args, compile_it: bool) -> dict:
    frames = args.frames
    r = {"model": spec, "crop": row["crop_size"], "frames": frames, "tokens_per_clip": row["tokens_per_clip"],
         "tflop_per_clip": row["flops_per_clip"] / 1e12}
    log(f"{spec}: building random weights ({row['params'] / 1e6:.0f} M params) ...")
    backbone = on_device(device, lambda: build_backbone(backbone_config(row).backbone, device=device).freeze())
    log(f"{spec}: extraction, batch {args.batch} ...")
    r["extract"] = extraction(backbone, row, device, args.batch, frames, args.steps, args.warmup)
    if compile_it:
        log(f"{spec}: extraction under torch.compile ...")
        try:
            r["extract_compiled"] = compiled_extraction(backbone, row, device, args.batch, frames, args.steps,
                                                        args.warmup)
        except Exception as e:  # a compiler missing on this machine is a finding, not a crash
            r["extract_compiled"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    del backbone
    for ckpt in (False, True):
        log(f"{spec}: LoRA training step, batch {args.train_batch}, gradient checkpointing {ckpt} ...")
        r[f"lora_checkpointing_{ckpt}"] = lora_step(row, device, args.train_batch, frames, args.steps, args.warmup,
                                                    ckpt)
    return r


def report(res: dict) -> str:
    peak = res["peak_bf16_tflops"]
    known = f"{peak:.0f} TFLOP/s" if peak else ("n/a (MFU is for GPUs)" if res["device"] == "cpu" else
                                                  "unknown for this card (MFU not computed; add it to PEAK_BF16)")
    lines = [f"device: {res['device']}; dense bf16 peak: {known}; "
             f"torch {res['torch']}; {res['cpus']} usable CPU cores", ""]
    for spec, why in res["skipped"].items():
        lines.append(f"{spec}: skipped ({why})")
    for r in res["models"]:
        e = r["extract"]
        mfu = f", MFU {e['clips_per_s'] * r['tflop_per_clip'] / peak:.1%}" if peak else ""
        mem = lambda x: f"{x:.1f} GiB" if x is not None else "n/a (cpu)"  # noqa: E731
        lines.append(f"{r['model']} {r['frames']}x{r['crop']} ({r['tflop_per_clip']:.2f} TFLOP/clip): extraction "
                     f"{e['clips_per_s']:.2f} clips/s (batch {e['batch']}){mfu}, "
                     f"peak memory {mem(e['peak_memory_gib'])}")
        c = r.get("extract_compiled")
        if c and "error" in c:
            lines.append(f"    torch.compile: failed ({c['error']})")
        elif c:
            speedup = c["clips_per_s"] / e["clips_per_s"]
            lines.append(f"    torch.compile: {c['clips_per_s']:.2f} clips/s = {speedup:.2f}x "
                         f"eager (compile {c['compile_s']:.0f} s), peak memory {mem(c['peak_memory_gib'])}")
        for ckpt in (False, True):
            s = r[f"lora_checkpointing_{ckpt}"]
            what = "with" if ckpt else "without"
            lines.append(f"    LoRA step {what} gradient checkpointing, batch {s['batch']}: " +
                         ("out of memory" if s.get("oom") else
                          f"{s['s_per_step']:.3f} s/step, peak memory {mem(s['peak_memory_gib'])}"))
    t = res.get("threads")
    if t:
        lines.append(f"threads (CPU, head step on stored ViT-L tokens): default {t['default_threads']} thread(s) of "
                     f"{t['usable_cpus']} cores {t['default_s']:.3f} s/step, 1 thread {t['one_s']:.3f} s/step: default "
                     f"is {t['speedup']:.2f}x faster" + (" (the same setting here: noise)" if t["default_threads"] == 1
                                                         else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help=f"family:preset (default {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="clips per extraction forward")
    p.add_argument("--train-batch", type=int, default=4, help="clips per LoRA training step")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", choices=["first", "all", "none"], default="first",
                   help="torch.compile vs eager on the first model (default), all, or none")
    p.add_argument("--no-threads", action="store_true", help="skip the CPU thread check")
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny sizes, CPU allowed: checks the script runs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.models = args.models or ["vjepa2:tiny"]
        args.frames, args.batch, args.train_batch, args.steps, args.warmup = 4, 2, 2, 2, 1
        args.compile = "none" if device.type == "cpu" else args.compile
    elif device.type != "cuda":
        p.error("no CUDA device here: run with --smoke to check the script on the CPU")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    name, peak = peak_tflops(device)
    res = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "cpus": usable_cpus(),
           "loadavg": os.getloadavg(), "args": vars(args) | {"json": str(args.json)}, "models": [], "skipped": {}}
    for i, spec in enumerate(args.models or DEFAULT_MODELS):
        row = find_model(spec, args.frames)
        if row is None:
            res["skipped"][spec] = "no such preset in this checkout (cvsjepa backbones lists them)"
            log(f"{spec}: skipped, no such preset in this checkout")
            continue
        compile_it = args.compile == "all" or (args.compile == "first" and not res["models"])
        res["models"].append(run_model(spec, row, device, args, compile_it))
    if not args.no_threads:
        log("threads: CPU head step, default vs 1 thread ...")
        res["threads"] = thread_check(2 if args.smoke else 5, tokens=32 if args.smoke else 512,
                                      dim=96 if args.smoke else 1024)
    print()
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
