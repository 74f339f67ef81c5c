"""``hieramamba demo``: the deployment path on the embedded default."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .common import positive_float, positive_int
from .ground import print_groundings


def cmd_demo(args) -> int:
    """Ground the queries of a synthetic long video with the embedded default (the tiny config
    trained on the synthetic set, hieramamba/assets/tiny). The video comes from the same generator
    and "world" (scene prototypes, text map) as the default's training data but is not one of its
    videos; every query is printed with its true moment."""
    import tempfile

    import numpy as np

    from hieramamba.checkpoint import default_synthetic_settings, load_default
    from hieramamba.data import make_synthetic
    from hieramamba.inference import Grounder

    model, opt = load_default()
    settings = default_synthetic_settings()
    geometry = settings.get("geometry", {})
    fps = float(geometry.get("fps", 30.0))
    stride = float(geometry.get("clip_stride", 16)) * int(geometry.get("downsample_rate", 1))
    rows = max(64, int(args.minutes * 60 * fps / stride))
    kwargs = {k: v for k, v in settings.get("make_synthetic", {}).items()
              if k not in ("n_videos", "min_len", "max_len", "split_fractions", "overwrite")}
    kwargs["max_moment_len"] = kwargs.get("max_moment_len") or 64
    with tempfile.TemporaryDirectory() as tmp:
        # video index args.seed of a set of equal-length videos: each index has its own stream
        syn = make_synthetic(tmp, n_videos=args.seed + 1, min_len=rows, max_len=rows,
                             split_fractions=(0, 0, 1), **kwargs)
        anno = json.loads(Path(syn.anno_file).read_text())
        vid_id = f"syn_{args.seed:05d}"
        entry = next(split[vid_id] for split in anno.values() if vid_id in split)
        video = np.load(Path(syn.vid_feat_dir) / f"{vid_id}.npy")
        items = entry["annotations"][: args.queries]
        queries = [np.load(Path(syn.text_feat_dir) / f"{a['sentence_id']}.npy") for a in items]
    truths = [tuple(a["segment"]) for a in items]
    from hieramamba.metrics import segment_iou
    from hieramamba.runtime import GroundingRuntime

    def timed(grounder, runs=3):  # after a warm-up call (one-off loading costs): best of `runs`
        out = grounder.ground(video, queries, fps=fps, duration=entry["duration"])
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            grounder.ground(video, queries, fps=fps, duration=entry["duration"])
            best = min(best, time.perf_counter() - t0)
        return out, best

    eager, elapsed_eager = timed(Grounder(model, opt))
    # The deployable path: the model exported to a stage bundle (cached after the first run),
    # run chunk by chunk — bounded memory, same answers within the dtype's rounding.
    if args.backend == "onnxruntime":
        from hieramamba.export.stages import default_bundle

        bundle = default_bundle(args.dtype, log=lambda line: print(f"  [export] {line}", file=sys.stderr,
                                                                   flush=True))
        runtime = GroundingRuntime.load(bundle, chunk=args.chunk)
        scan = {"native": "C++ kernel", "graph": "ONNX function body"}[runtime.backend.scan_kernel]
        path = f"exported {args.dtype} bundle on ONNX Runtime (CPU; HydraScan: {scan}), chunk {args.chunk}"
    else:
        runtime = GroundingRuntime.from_model(model, opt, dtype=args.dtype, chunk=args.chunk)
        path = f"torch {args.dtype} backend, chunk {args.chunk}"
    results, elapsed = timed(runtime)
    print(f"synthetic video {vid_id}: {len(video)} clips ({entry['duration'] / 60:.1f} min), "
          f"{len(queries)} queries; embedded default (tiny config trained on the synthetic set)")
    for i, a in enumerate(items):
        print(f"  query {i}: \"{a['sentence']}\"")
    print(f"groundings from the chunked runtime ({path}):")
    print_groundings(results, truths)
    # "Same top-1": the runtime's best segment overlaps eager's best with IoU ≥ 0.99 (fp16
    # moves boundaries by ~1e-4 relative; a different candidate would overlap far less).
    agree = [bool(segment_iou(np.array([r[0].start_sec, r[0].end_sec]),
                              np.array([e[0].start_sec, e[0].end_sec])) >= 0.99)
             for r, e in zip(results, eager) if r and e]
    print(f"eager PyTorch fp32 (whole video): {elapsed_eager:.3f} s (best of 3)")
    print(f"chunked runtime ({path}): {elapsed:.3f} s "
          f"({elapsed_eager / elapsed:.2f}x eager); top-1 segment same as eager for "
          f"{sum(agree)}/{len(agree)} queries")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="ground queries in a synthetic long video with the embedded trained default")
    # 3 min by default: the default's synthetic world has 6 scenes and was trained on ~1 min
    # windows; much longer videos have few unambiguous queries (and are out of distribution)
    p.add_argument("--minutes", type=positive_float, default=3.0)
    p.add_argument("--seed", type=int, default=0, help="which synthetic video (index in the generator)")
    p.add_argument("--queries", type=positive_int, default=5, help="at most this many queries")
    p.add_argument("--chunk", type=positive_int, default=512, help="chunked runtime: level tokens per chunk")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="chunked runtime backend (onnxruntime: the exported bundle, cached)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="runtime precision")
    p.set_defaults(func=cmd_demo)
