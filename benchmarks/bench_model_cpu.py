"""CPU forward latency and peak memory of the eager PyTorch model at released sizes.

Random weights, the official per-video eval path (``Grounder.level_outputs`` + decoding).
Each case runs in a fresh process so its peak RSS is its own. Compare with
``../shared/PERF_ANCHORS.md`` (official code on the same machine kind).

    python benchmarks/bench_model_cpu.py            # all cases
    python benchmarks/bench_model_cpu.py --case ego4d:2304:1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from hieramamba.profiling.memory import peak_rss_mb

CASES = ["ego4d:2304:1", "ego4d:2304:8", "mad:32768:1"]


def run_case(spec: str, repeats: int, warmup: int) -> dict:
    import numpy as np
    import torch

    from hieramamba.config import load_config
    from hieramamba.inference import Grounder
    from hieramamba.model import build_model

    name, clips, n_queries = spec.split(":")
    clips, n_queries = int(clips), int(n_queries)
    torch.manual_seed(0)
    opt = load_config(name)
    model = build_model(opt)
    grounder = Grounder(model, opt)
    rng = np.random.default_rng(0)
    video = rng.standard_normal((clips, model.vid_in_dim), dtype=np.float32)
    n_tok = min(20, opt["eval"].get("max_text_len", 20))
    queries = [rng.standard_normal((n_tok, model.text_in_dim), dtype=np.float32) for _ in range(n_queries)]
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        grounder.ground(video, queries, fps=30.0)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak_mb = peak_rss_mb()
    return {"case": spec, "median_s": statistics.median(times), "min_s": min(times),
            "repeats": repeats, "peak_rss_mb": round(peak_mb, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="config:clips:queries (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_case(args._child, args.repeats, args.warmup)))
        return
    rows = []
    for spec in args.case or CASES:
        proc = subprocess.run([sys.executable, __file__, "--_child", spec, "--repeats", str(args.repeats),
                               "--warmup", str(args.warmup)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{spec}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['case']:>16s}  median {r['median_s']:8.3f} s  min {r['min_s']:8.3f} s  "
              f"peak RSS {r['peak_rss_mb']:8.1f} MB  (threads {r['threads']}, torch {r['torch']})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
