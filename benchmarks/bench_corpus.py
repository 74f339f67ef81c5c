"""Corpus throughput (videos/s, queries/s) vs workers, local processes vs Ray actors, and the
per-video overhead of each engine. Not a CI test.

Two synthetic corpora of random features (no ground truth), written once into ``--work``:

* long: ``--videos`` videos of ``--min-clips``..``--max-clips`` clips, ``--queries`` queries each
  (throughput; each run's wall time includes starting the workers, and Ray itself);
* short: 64-clip videos with one query, run at two corpus sizes with one worker: the difference
  in wall time per extra video, less the grounding time the workers report, is what the engine
  adds per video (dispatch, result transfer, atomic result file, status row).

The bundle: ``--bundle``, or the packaged default experiment exported once (fp32) into ``--work``.
Ray runs start a private local instance per run (``--engine ray`` without ``--address``). On a
shared host keep Ray on loopback by running the whole benchmark in a network namespace that holds
only ``lo`` (root)::

    ip netns add hm-bench && ip netns exec hm-bench ip link set lo up
    RAY_USAGE_STATS_ENABLED=0 ip netns exec hm-bench python3 benchmarks/bench_corpus.py --json /tmp/corpus.json
    ip netns del hm-bench

Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def write_corpus(folder: Path, lengths, queries: int, dims, seed: int = 0) -> Path:
    """Random ``(clips, Dv)`` videos and ``(8, Dt)`` queries plus their JSONL manifest."""
    import numpy as np

    manifest = folder / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(lengths):
        vid = f"v{i:04d}"
        np.save(folder / f"{vid}.npy", rng.standard_normal((n, dims[0]), dtype=np.float32))
        qids = [f"{vid}_q{k}" for k in range(queries)]
        for q in qids:
            np.save(folder / f"{q}.npy", rng.standard_normal((8, dims[1]), dtype=np.float32))
        rows.append({"video_id": vid, "video_path": f"{vid}.npy", "fps": 30.0, "duration": None,
                     "query_ids": qids, "query_paths": [f"{q}.npy" for q in qids], "num_clips": n})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def default_bundle(work: Path) -> Path:
    bundle = work / "bundle"
    if not (bundle / "manifest.json").is_file():
        from hieramamba.checkpoint import default_experiment_dir

        subprocess.run([sys.executable, "-m", "hieramamba.cli", "export-bundle", "--experiment",
                        str(default_experiment_dir()), "--out", str(bundle), "--dtype", "float32"], check=True)
    return bundle


def run(manifest: Path, bundle: Path, out: Path, engine: str, workers: int) -> dict:
    from hieramamba.corpus import RunOptions, WorkerConfig, read_manifest, run_corpus

    shutil.rmtree(out, ignore_errors=True)
    tasks = read_manifest(manifest)
    t0 = time.perf_counter()
    summary = run_corpus(tasks, out, WorkerConfig(bundle=str(bundle)), RunOptions(engine=engine, workers=workers))
    wall = time.perf_counter() - t0
    assert summary.grounded == len(tasks) and not summary.partial, summary.line()
    rows = [json.loads(line) for line in (out / "status.jsonl").read_text().splitlines()]
    return {"engine": engine, "workers": workers, "threads": json.loads((out / "summary.json").read_text())["threads"],
            "videos": len(tasks), "queries": summary.queries, "wall_s": wall,
            "grounding_s": sum(r["seconds"] for r in rows), "videos_per_s": len(tasks) / wall,
            "queries_per_s": summary.queries / wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="fp32/fp16 bundle (default: the packaged default experiment, exported once)")
    ap.add_argument("--work", default="/tmp/hieramamba-bench-corpus", help="corpora, bundle and outputs")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--min-clips", type=int, default=8000)
    ap.add_argument("--max-clips", type=int, default=16000)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--short-videos", default="8,88", help="two sizes of the short corpus (overhead)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    from hieramamba.artifacts import BundleManifest

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle) if args.bundle else default_bundle(work)
    plan = BundleManifest.read(bundle).plan
    dims = (plan.vid_in_dim, plan.text_in_dim)
    step = (args.max_clips - args.min_clips) / max(1, args.videos - 1)
    long = write_corpus(work / f"long-{args.videos}-{args.min_clips}-{args.max_clips}-{args.queries}",
                        [round(args.min_clips + i * step) for i in range(args.videos)], args.queries, dims)
    engines, workers = args.engines.split(","), [int(w) for w in args.workers.split(",")]

    throughput = [run(long, bundle, work / "out", e, w) for e in engines for w in workers]
    small, big = (int(n) for n in args.short_videos.split(","))
    overhead = []
    for engine in engines:
        runs = [run(write_corpus(work / f"short-{n}", [64] * n, 1, dims, seed=1), bundle, work / "out", engine, 1)
                for n in (small, big)]
        per_video = (runs[1]["wall_s"] - runs[0]["wall_s"]) / (big - small)
        grounding = (runs[1]["grounding_s"] - runs[0]["grounding_s"]) / (big - small)
        overhead.append({"engine": engine, "per_video_s": per_video, "grounding_per_video_s": grounding,
                         "overhead_per_video_ms": 1e3 * (per_video - grounding), "runs": runs})
    shutil.rmtree(work / "out", ignore_errors=True)

    print(f"long corpus: {args.videos} videos of {args.min_clips}–{args.max_clips} clips, {args.queries} queries each; "
          f"bundle {bundle} ({BundleManifest.read(bundle).dtype}); {os.cpu_count()} CPUs")
    print(f"{'engine':7s} {'workers':>7s} {'threads':>7s} {'wall s':>8s} {'videos/s':>9s} {'queries/s':>10s}")
    for r in throughput:
        print(f"{r['engine']:7s} {r['workers']:7d} {r['threads']:7d} {r['wall_s']:8.2f} {r['videos_per_s']:9.2f} "
              f"{r['queries_per_s']:10.1f}")
    print(f"short corpus (64 clips, 1 query; {small} vs {big} videos, 1 worker): per extra video")
    for o in overhead:
        print(f"{o['engine']:7s} wall {1e3 * o['per_video_s']:7.1f} ms, grounding {1e3 * o['grounding_per_video_s']:6.1f} ms, "
              f"engine overhead {o['overhead_per_video_ms']:6.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": throughput, "overhead": overhead,
                                               "cpus": os.cpu_count(), "bundle": str(bundle)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
