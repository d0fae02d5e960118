"""Throughput and peak memory of `cvsjepa predict` on long generated videos (tiny random backbone).

    python benchmarks/predict.py                                  # 1 fps 480p: 10, 20, 40 min
    python benchmarks/predict.py --fps 25 --minutes 2.5 5 10      # 25 fps 480p source
    python benchmarks/predict.py --fps 25 --size 1920x1080 --minutes 1 2

Each video is generated procedurally (a drifting textured scene with a moving instrument, libx264
ultrafast, GOP 250), never stored in the repository, and predicted in a FRESH Python process so
that the peak RSS is that run's own (``VmHWM``). RSS is also sampled during the run; the
figures to compare across lengths are peak RSS and the RSS growth from 25% to 100% of the video.
Figures go to stdout as a table and (``--json``) a file; results are recorded in
docs/benchmarks_predict.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def generate_video(path: Path, minutes: float, fps: float, width: int, height: int, seed: int = 0) -> Path:
    """A procedurally drawn video: pinkish texture drifting like a laparoscope, a dark moving tool."""
    import av

    rng = np.random.default_rng(seed)
    pad = 64
    yy, xx = np.mgrid[0:height + 2 * pad, 0:width + 2 * pad]
    texture = (np.sin(xx / 23.0) * np.cos(yy / 31.0) * 25 + rng.normal(0, 6, xx.shape)).astype(np.float32)
    base = np.stack([190 + texture, 110 + texture * 0.6, 120 + texture * 0.5], -1).clip(0, 255).astype(np.uint8)
    n = int(round(minutes * 60 * fps))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23", "g": "250"}
        for i in range(n):
            t = i / fps
            dx, dy = int(pad + pad * 0.9 * np.sin(t / 17)), int(pad + pad * 0.9 * np.cos(t / 23))
            frame = base[dy:dy + height, dx:dx + width].copy()
            tx = int((0.5 + 0.4 * np.sin(t / 7)) * width)
            frame[height // 3: height // 3 + height // 12, max(0, tx - width // 3): tx] = (60, 60, 70)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def make_tiny_model(out: Path, frames: int) -> Path:
    """A checkpoint of the tiny random backbone + an attentive head (random head weights: speed only)."""
    import torch

    from cvsjepa.backbones import build_backbone
    from cvsjepa.checkpoint import save_classifier
    from cvsjepa.config import load_config
    from cvsjepa.heads import build_head
    from cvsjepa.model import CVSClassifier

    cfg = load_config(None, ["backbone=tiny", f"data.frames={frames}", "head.num_heads=4", "head.mlp_hidden=32"])
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone).freeze()
    save_classifier(out, CVSClassifier(backbone, build_head(cfg.head, backbone.embed_dim)), cfg)
    (out / "thresholds.json").write_text(json.dumps({"thresholds": [0.5, 0.5, 0.5]}))
    return out


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB. VmHWM, unlike ``ru_maxrss``, starts
    afresh at exec: ``ru_maxrss`` would carry over the parent's peak (here: the video generator's)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def child(video: str, model: str, batch_size: int, threads: int) -> None:
    """Run predict in this process; print one JSON line with time and memory figures."""
    import torch

    torch.set_num_threads(threads)
    from cvsjepa.api import CVSModel

    rss_trace: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set():
            rss_trace.append((time.perf_counter(), _status_mb("VmRSS")))
            stop.wait(0.25)

    m = CVSModel.from_run(Path(model), device="cpu")
    peak_loaded = _status_mb("VmHWM")
    sampler = threading.Thread(target=sample_rss, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    timeline = m.predict_video(video, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    rss = [kb for _, kb in rss_trace]
    q = lambda f: rss[min(len(rss) - 1, int(f * (len(rss) - 1)))] if rss else 0  # noqa: E731
    print(json.dumps({
        "samples": len(timeline), "decoded_frames": timeline.decode["decoded_frames"], "seconds": round(seconds, 2),
        "samples_per_s": round(len(timeline) / seconds, 1),
        "decoded_frames_per_s": round(timeline.decode["decoded_frames"] / seconds, 1),
        "video_s_per_s": round(timeline.duration_s / seconds, 1),
        "peak_rss_mb": round(_status_mb("VmHWM"), 1), "peak_rss_loaded_mb": round(peak_loaded, 1),
        "rss_at_25pct_mb": round(q(0.25), 1), "rss_at_100pct_mb": round(q(1.0), 1),
        "rss_deciles_mb": [round(q(i / 10)) for i in range(11)],
        "complete": timeline.complete,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 40])
    p.add_argument("--fps", type=float, default=1.0, help="frame rate of the generated video (sampling is 1 fps)")
    p.add_argument("--size", default="854x480", help="WIDTHxHEIGHT of the generated video")
    p.add_argument("--frames", type=int, default=16, help="clip length of the model (training default 16)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in the child")
    p.add_argument("--workdir", help="keep videos here (default: a temporary folder, removed)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", nargs=2, metavar=("VIDEO", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch_size, args.threads)
        return
    width, height = (int(x) for x in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = make_tiny_model(work / "model", args.frames)
        results = []
        for minutes in args.minutes:
            video = work / f"gen_{minutes:g}min_{args.fps:g}fps_{height}p.mp4"
            t0 = time.perf_counter()
            if not video.exists():
                generate_video(video, minutes, args.fps, width, height)
            gen_s = time.perf_counter() - t0
            out = subprocess.run([sys.executable, __file__, "--child", str(video), str(model),
                                  "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            r = {"minutes": minutes, "fps": args.fps, "size": args.size,
                 "file_mb": round(video.stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1),
                 **json.loads(out.stdout.strip().splitlines()[-1]),
                 "load_avg_1min": round(os.getloadavg()[0], 1)}  # other processes on the machine: timings are noisy
            results.append(r)
            print(json.dumps(r), flush=True)
    cols = ["minutes", "fps", "size", "samples", "decoded_frames", "seconds", "samples_per_s", "decoded_frames_per_s",
            "video_s_per_s", "peak_rss_loaded_mb", "rss_at_25pct_mb", "rss_at_100pct_mb", "peak_rss_mb",
            "load_avg_1min"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
