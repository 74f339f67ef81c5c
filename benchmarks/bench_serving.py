"""Benchmark (not a CI test): what Triton serving costs over the direct call, on this machine.

For a 34-second, a 3-minute and a 1-hour video (Ego4D dimensions, random weights, a per-sample
fp32 bundle, one query of 12 tokens), it measures:

* the direct in-process call (``GroundingRuntime.ground``) — the reference;
* ``hieramamba_ground`` over HTTP and gRPC with the features inline: server overhead = its latency
  minus the direct call's;
* ``hieramamba_ground_query`` with ``VIDEO_ID`` (features memory-mapped server-side): the
  transport cost of inline features = inline latency minus by-id latency;
* throughput of ``hieramamba_ground`` (3-minute video, 4 concurrent clients) with 1 and 2
  instances.

Every latency is the median of ``--rounds`` calls after a warm-up call. Each instance runs ONNX
Runtime with ``--threads`` threads (default 1: two instances fill this 2-core machine).

    python3 benchmarks/bench_serving.py                       # work files in build/bench_serving
    python3 benchmarks/bench_serving.py --rounds 5 --json serving.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FPS, STRIDE = 30.0, 16  # Ego4D clip geometry: 1.875 clips per second
# 64 clips (34 s): the per-request overhead with almost no grounding or transport in it
LENGTHS = {"34 s": 64, "3 min": int(3 * 60 * FPS / STRIDE), "1 h": int(60 * 60 * FPS / STRIDE)}


def bundle_for(work: Path, config: str) -> Path:
    """A per-sample fp32 bundle of ``config`` with random weights (exported once, then reused)."""
    out = work / f"{config}_per_sample_fp32"
    if (out / "manifest.json").is_file():
        return out
    import torch

    from hieramamba.config import load_config
    from hieramamba.export.stages import export_bundle
    from hieramamba.model import build_model

    torch.manual_seed(0)
    opt = load_config(config)
    model = build_model(opt, mask_semantics="per_sample").eval()
    print(f"exporting {config} (per_sample, float32) to {out} ...", file=sys.stderr)
    export_bundle(model, opt, out, dtype="float32")
    return out


def median_seconds(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="build/bench_serving", help="bundle and feature files (kept between runs)")
    ap.add_argument("--config", default="ego4d")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per instance and direct call")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients of the throughput runs")
    ap.add_argument("--requests", type=int, default=16, help="requests per throughput run")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    from hieramamba.runtime import GroundingRuntime
    from hieramamba.serving.client import GroundingClient
    from hieramamba.serving.repository import ServeOptions
    from hieramamba.serving.server import TritonServer, free_port

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = bundle_for(work, args.config)
    direct = GroundingRuntime.load(bundle, threads=args.threads)
    plan = direct.plan
    features = work / "features"
    features.mkdir(exist_ok=True)
    g = np.random.default_rng(0)
    videos = {}
    for name, clips in LENGTHS.items():
        vid = name.replace(" ", "")
        path = features / f"{vid}.npy"
        if not path.is_file():
            np.save(path, g.standard_normal((clips, plan.vid_in_dim)).astype(np.float32))
        videos[name] = (vid, np.load(path))
    query = g.standard_normal((12, plan.text_in_dim)).astype(np.float32)

    report = {"config": args.config, "threads_per_instance": args.threads, "rounds": args.rounds,
              "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "latency": {},
              "throughput": {}}
    for instances in (1, 2):
        options = ServeOptions(features=str(features), threads=args.threads, instances=instances)
        server = TritonServer.for_bundle(bundle, options, http_port=free_port(), grpc_port=free_port(),
                                         metrics_port=free_port())
        with server:
            if instances == 1:
                http, grpc = GroundingClient(server.http_url), GroundingClient(server.grpc_url)
                for name, (vid, video) in videos.items():
                    row = {"clips": len(video), "feature_mb": round(video.nbytes / 1e6, 2)}
                    row["direct_s"] = median_seconds(lambda: direct.ground(video, [query], fps=FPS), args.rounds)
                    row["http_inline_s"] = median_seconds(lambda: http.ground(video, [query], FPS), args.rounds)
                    row["grpc_inline_s"] = median_seconds(lambda: grpc.ground(video, [query], FPS), args.rounds)
                    row["http_by_id_s"] = median_seconds(lambda: http.ground_query(vid, query, FPS), args.rounds)
                    row["grpc_by_id_s"] = median_seconds(lambda: grpc.ground_query(vid, query, FPS), args.rounds)
                    report["latency"][name] = row
                    print(f"{name}: {row}", file=sys.stderr)
                http.close()
                grpc.close()
            vid, video = videos["3 min"]

            def one(_):
                with GroundingClient(server.http_url) as c:
                    c.ground(video, [query], FPS)

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(one, range(args.clients)))  # warm every instance
                t0 = time.perf_counter()
                list(pool.map(one, range(args.requests)))
                elapsed = time.perf_counter() - t0
            report["throughput"][instances] = round(args.requests / elapsed, 3)
            print(f"{instances} instance(s): {args.requests / elapsed:.2f} requests/s", file=sys.stderr)

    print(f"\n{args.config} random weights, per-sample fp32 bundle, 1 query × 12 tokens, {args.threads} ORT "
          f"thread(s) per instance, median of {args.rounds}; load {report['load_average_1min']}")
    print("| video | clips | features | direct | HTTP inline | gRPC inline | HTTP by id | gRPC by id | "
          "overhead HTTP / gRPC | inline transport HTTP / gRPC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in report["latency"].items():
        ms = {k: 1e3 * v for k, v in r.items() if k.endswith("_s")}
        print(f"| {name} | {r['clips']} | {r['feature_mb']} MB | {ms['direct_s']:.0f} ms | {ms['http_inline_s']:.0f} | "
              f"{ms['grpc_inline_s']:.0f} | {ms['http_by_id_s']:.0f} | {ms['grpc_by_id_s']:.0f} | "
              f"{ms['http_inline_s'] - ms['direct_s']:+.0f} / {ms['grpc_inline_s'] - ms['direct_s']:+.0f} ms | "
              f"{ms['http_inline_s'] - ms['http_by_id_s']:+.0f} / {ms['grpc_inline_s'] - ms['grpc_by_id_s']:+.0f} ms |")
    print(f"throughput (3 min, {args.clients} clients): " +
          ", ".join(f"{k} instance(s) {v:.2f} req/s" for k, v in report["throughput"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
