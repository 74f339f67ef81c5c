"""Peak RSS and latency vs video length: chunked runtime vs whole-sequence eager (CPU).

Not a CI test. Each (path, length) runs in a fresh subprocess so that its peak RSS
(``VmHWM``, ``hieramamba.profiling.memory``) is its own. Random weights; the video is random features of the given length.

    python benchmarks/bench_runtime_cpu.py --config tiny --minutes 10,60,180,600 --paths chunked,eager
    python benchmarks/bench_runtime_cpu.py --bundle /tmp/bundle --paths ort --minutes 10,600
    python benchmarks/bench_runtime_cpu.py --bundle /tmp/mad_bf16 --paths ort --minutes 10,60,600 \
        --sec-per-clip 0.2 --threads 2      # MAD: 5 features per second

Prints a table and writes JSON (``--json``). "RSS − input" subtracts the video feature array; the
``ort`` path reads the video's rows from a ``.npy`` file as ``hieramamba ground --bundle`` does
(``open_npy_rows``), so none of it counts as input there.
The acceptance check (DESIGN §4): chunked peak RSS − input stays within 1.2× from the shortest
to the longest video.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from hieramamba.profiling.memory import peak_rss_mb, reset_peak_rss


def run_one(args) -> dict:
    import numpy as np

    sec_per_clip = None
    if args.path == "ort":
        from hieramamba.runtime import GroundingRuntime

        rt = GroundingRuntime.load(args.bundle, chunk=args.chunk, threads=args.threads)
        plan = rt.plan
        dv, dt = plan.vid_in_dim, plan.text_in_dim
        sec_per_clip = plan.clip_stride / 30.0  # frames at 30 fps; MAD's features: --sec-per-clip 0.2
        run = lambda v, q: rt.level_outputs(v, q)  # noqa: E731
    else:
        import torch

        from hieramamba.config import load_config
        from hieramamba.model import build_model

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        opt = load_config(args.config)
        model = build_model(opt).eval()
        dv, dt = model.vid_in_dim, model.text_in_dim
        data = opt["train"]["data"]
        sec_per_clip = data.get("clip_stride", 1) * data.get("downsample_rate", 1) / 30.0
        if args.config.startswith("mad"):
            sec_per_clip = 0.2
        if args.path == "chunked":
            from hieramamba.runtime import GroundingRuntime

            rt = GroundingRuntime.from_model(model, opt, chunk=args.chunk)
            run = lambda v, q: rt.level_outputs(v, q)  # noqa: E731
        else:
            from hieramamba.inference import Grounder

            g = Grounder(model, opt)
            run = lambda v, q: g.level_outputs(v, q)  # noqa: E731
    n_clips = int(args.minutes * 60 / (args.sec_per_clip or sec_per_clip))
    rng = np.random.default_rng(0)
    queries = [rng.standard_normal((8, dt), dtype=np.float32) for _ in range(args.queries)]
    if args.path == "ort":
        import tempfile

        from hieramamba.features import open_npy_rows

        with tempfile.NamedTemporaryFile(suffix=".npy") as fh:
            rows = np.lib.format.open_memmap(fh.name, mode="w+", dtype=np.float32, shape=(n_clips, dv))
            for i in range(0, n_clips, 4096):
                rows[i:i + 4096] = rng.standard_normal((min(4096, n_clips - i), dv), dtype=np.float32)
            rows.flush()
            del rows
            video = open_npy_rows(fh.name)
        if video is None:
            raise SystemExit("open_npy_rows cannot read the video in place on this platform")
        input_mb = 0.0
    else:
        video = rng.standard_normal((n_clips, dv), dtype=np.float32)  # no float64 temporary in the peak
        input_mb = video.nbytes / 2 ** 20
    reset_peak_rss()  # the ort path's written (file-backed) pages are not the run's
    base = peak_rss_mb()
    t0 = time.perf_counter()
    run(video, queries)
    latency = time.perf_counter() - t0
    peak = peak_rss_mb()
    return {"path": args.path, "minutes": args.minutes, "clips": n_clips, "queries": args.queries,
            "latency_s": latency, "peak_rss_mb": peak, "rss_before_run_mb": base,
            "input_mb": input_mb, "peak_minus_input_mb": peak - input_mb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--bundle", help="exported bundle for the 'ort' path")
    ap.add_argument("--minutes", default="10,60,180,600")
    ap.add_argument("--paths", default="chunked,eager", help="chunked (torch), eager, ort")
    ap.add_argument("--queries", type=int, default=1)
    ap.add_argument("--chunk", type=int, help="level tokens per chunk (default: the runtime's)")
    ap.add_argument("--sec-per-clip", type=float, help="seconds of video per feature (default: the config's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        args.minutes = float(args.minutes)
        print(json.dumps(run_one(args)))
        return 0
    rows = []
    print(f"{'path':8s} {'minutes':>8s} {'clips':>7s} {'latency s':>10s} {'peak RSS MB':>12s} {'RSS-input MB':>13s}")
    for path in args.paths.split(","):
        for minutes in args.minutes.split(","):
            cmd = [sys.executable, __file__, "--one", "--path", path, "--minutes", minutes,
                   "--config", args.config, "--queries", str(args.queries), "--threads", str(args.threads)]
            cmd += ["--chunk", str(args.chunk)] if args.chunk else []
            cmd += ["--sec-per-clip", str(args.sec_per_clip)] if args.sec_per_clip else []
            cmd += ["--bundle", args.bundle] if args.bundle else []
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{path:8s} {minutes:>8s}  timed out after {args.timeout:.0f} s", flush=True)
                rows.append({"path": path, "minutes": float(minutes), "timeout_s": args.timeout})
                continue
            if res.returncode != 0:
                print(f"{path:8s} {minutes:>8s}  failed: {res.stderr.strip().splitlines()[-1:]}", flush=True)
                rows.append({"path": path, "minutes": float(minutes), "error": res.stderr[-2000:]})
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{path:8s} {row['minutes']:8.0f} {row['clips']:7d} {row['latency_s']:10.2f} "
                  f"{row['peak_rss_mb']:12.0f} {row['peak_minus_input_mb']:13.0f}", flush=True)
    for path in args.paths.split(","):
        ok = [r for r in rows if r.get("path") == path and "peak_rss_mb" in r]
        if len(ok) >= 2:
            ratio = ok[-1]["peak_minus_input_mb"] / ok[0]["peak_minus_input_mb"]
            print(f"{path}: (peak RSS − input) longest / shortest = {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
