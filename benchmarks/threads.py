"""CPU threads: `cvsjepa demo` and one `cvsjepa predict` with cvsjepa's default thread choice against
fixed settings, side by side in one run (whole processes: wall and CPU seconds).

    python benchmarks/threads.py                    # 3 paired repeats
    python benchmarks/threads.py --repeats 5 --predict-minutes 10
    python benchmarks/threads.py --load 2           # with 2 busy processes beside it: a shared machine

Settings: ``default`` (no OMP_NUM_THREADS: cvsjepa chooses from the usable cores, runtime.py),
``1`` (OMP_NUM_THREADS=1) and ``N`` (OMP_NUM_THREADS = the usable cores, torch's own default). The
settings of one repeat run back to back in a rotated order, so a burst of load from other jobs hits
them alike; figures are medians over the repeats and the ratios are against the best setting.
A warm-up demo run writes the synthetic dataset first, so every timed demo only trains. Goal (issue
22): default within 1.1x of the best setting on 2 cores, and faster than 1 thread on 8+ cores.
Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def usable_cpus() -> int:
    from cvsjepa.runtime import usable_cpus as cpus

    return cpus()


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one command; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spin() -> None:
    """A busy process (pure Python, one core): the other jobs of a shared machine."""
    while True:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--predict-minutes", type=float, default=5.0, help="length of the 1 fps video to predict")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--load", type=int, default=0,
                   help="busy processes running beside the timed commands (a loaded shared machine)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cvsjepa_threads_"))
    cpus = usable_cpus()
    settings = {"default": None, "1": "1", str(cpus): str(cpus)} if cpus > 1 else {"default": None, "1": "1"}
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cli = [sys.executable, "-m", "cvsjepa"]
    demo = [*cli, "demo", "--out", str(work / "demo"), "--no-progress"]
    print(f"usable cores: {cpus}; warm-up demo (writes the dataset) ...", flush=True)
    timed(demo, base_env)
    from predict import generate_video

    video = generate_video(work / "case.mp4", args.predict_minutes, 1.0, 854, 480)
    run = work / "demo" / "run1"
    results: dict[str, dict[str, list]] = {s: {"demo": [], "predict": []} for s in settings}
    busy = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for b in busy:
        b.start()
    names = list(settings)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            env = dict(base_env)
            if settings[name] is not None:
                env["OMP_NUM_THREADS"] = settings[name]
            results[name]["demo"].append(timed(demo, env))
            out = work / f"timeline_{name}_{r}"
            results[name]["predict"].append(timed([*cli, "predict", str(video), "--run", str(run), "--out", str(out),
                                                   "--no-plot", "--no-progress"], env))
            print(f"repeat {r + 1}: {name:>8}  demo {results[name]['demo'][-1][0]:6.1f} s wall   predict "
                  f"{results[name]['predict'][-1][0]:6.1f} s wall", flush=True)
    for b in busy:
        b.terminate()
    print(f"\nmedians over {args.repeats} paired repeats, {cpus} usable core(s), {args.load} busy process(es) "
          f"beside them "
          f"(load average now {os.getloadavg()[0]:.2f}):")
    print(f"{'setting':>10} {'demo wall':>10} {'demo CPU':>9} {'predict wall':>13} {'predict CPU':>12}")
    med = {n: {job: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
               for job, v in results[n].items()} for n in names}
    for n in names:
        d, q = med[n]["demo"], med[n]["predict"]
        print(f"{n:>10} {d[0]:9.1f}s {d[1]:8.1f}s {q[0]:12.1f}s {q[1]:11.1f}s")
    for job in ("demo", "predict"):
        best = min(names, key=lambda n: med[n][job][0])
        ratio = med["default"][job][0] / med[best][job][0]
        one = med["1"][job][0] / med["default"][job][0]
        print(f"{job}: default / best ({best}) = {ratio:.2f}x wall; 1 thread / default = {one:.2f}x wall")


if __name__ == "__main__":
    main()
