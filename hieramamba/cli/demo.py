"""``hieramamba demo``: the deployment path on the embedded default, on a long video.

A synthetic video from the default's own world (the generator settings it was trained with,
``hieramamba/assets/tiny/synthetic.json``) but longer than anything it saw in training — 30
minutes of clips by default — is grounded by the chunked fp16 runtime on the exported bundle
(cached after the first run) and by eager PyTorch on the whole sequence. Per query the top
segments are printed beside the true moment, then one summary: hits at IoU 0.5, latency and
peak memory of each path, and whether their top-1 segments agree.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import positive_float, positive_int

TOP_SHOWN = 3        # segments printed per query
EAGER_UP_TO_MIN = 120  # longer videos skip eager by default: its memory grows with the video


def demo_video(minutes: float, index: int = 0, max_queries: int = 5) -> dict:
    """The demo's video: video ``index`` of a set of ``minutes``-long videos drawn from the
    embedded default's synthetic world. Returns ``{"id", "video" (T, Dv), "queries" [(tokens, Dt)],
    "sentences", "truths" [(start, end) s], "fps", "duration"}``."""
    from hieramamba.checkpoint import default_synthetic_settings
    from hieramamba.data import make_synthetic

    settings = default_synthetic_settings()
    geometry = settings.get("geometry", {})
    fps = float(geometry.get("fps", 30.0))
    stride = float(geometry.get("clip_stride", 16)) * int(geometry.get("downsample_rate", 1))
    rows = max(64, int(round(minutes * 60 * fps / stride)))
    world = {k: v for k, v in settings["make_synthetic"].items()
             if k not in ("n_videos", "min_len", "max_len", "split_fractions", "overwrite")}
    with tempfile.TemporaryDirectory(prefix="hieramamba_demo_") as tmp:
        syn = make_synthetic(tmp, n_videos=index + 1, min_len=rows, max_len=rows, split_fractions=(0, 0, 1),
                             **world)
        anno = json.loads(Path(syn.anno_file).read_text())
        vid_id = f"syn_{index:05d}"
        entry = next(split[vid_id] for split in anno.values() if vid_id in split)
        video = np.load(Path(syn.vid_feat_dir) / f"{vid_id}.npy")
        items = entry["annotations"][:max_queries]
        queries = [np.load(Path(syn.text_feat_dir) / f"{a['sentence_id']}.npy") for a in items]
    return {"id": vid_id, "video": video, "queries": queries, "sentences": [a["sentence"] for a in items],
            "truths": [tuple(a["segment"]) for a in items], "fps": fps, "duration": entry["duration"]}


def measure(fn, runs: int = 2):
    """``fn()``'s result, its best wall time over ``runs`` calls after a warm-up call, and the
    process's peak RSS during those calls with its rise over the RSS before them (MB; None where
    the peak cannot be reset)."""
    from hieramamba.profiling.memory import peak_rss_mb, reset_peak_rss, rss_mb

    out = fn()  # warm-up: sessions, caches, first-touch memory
    before = rss_mb() if reset_peak_rss() else None
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    if before is None:
        return out, best, None
    peak = peak_rss_mb()
    return out, best, (peak, peak - before)


def top1_agreement(a, b) -> list:
    """Per query: the two paths' best segments are the same candidate (IoU ≥ 0.99: fp16 moves a
    boundary by ~1e-4 relative; another candidate would overlap far less)."""
    from hieramamba.metrics import segment_iou

    return [bool(x and y and segment_iou(np.array([x[0].start_sec, x[0].end_sec]),
                                         np.array([y[0].start_sec, y[0].end_sec])) >= 0.99) for x, y in zip(a, b)]


def hits(results, truths, threshold: float = 0.5, rank: int = 1) -> list:
    """Per query: one of the top ``rank`` segments overlaps the true moment with IoU ≥ threshold."""
    from hieramamba.metrics import segment_iou

    return [any(segment_iou(np.array([s.start_sec, s.end_sec]), np.array(t)) >= threshold for s in segs[:rank])
            for segs, t in zip(results, truths)]


def cmd_demo(args) -> int:
    from hieramamba.checkpoint import load_default
    from hieramamba.metrics import segment_iou
    from hieramamba.runtime import GroundingRuntime

    log = lambda line: print(f"  [export] {line}", file=sys.stderr, flush=True)  # noqa: E731
    # The deployable path first: its bundle is exported once and cached (a cache problem is
    # named before any other work).
    if args.backend == "onnxruntime":
        from hieramamba.export.stages import default_bundle

        bundle = default_bundle(args.dtype, log=log)
        runtime = GroundingRuntime.load(bundle, chunk=args.chunk, threads=args.threads)
        scan = {"native": "C++ kernel", "graph": "ONNX function body"}[runtime.backend.scan_kernel]
        path = f"chunked {args.dtype} runtime on ONNX Runtime (exported bundle, HydraScan: {scan})"
    else:
        model, opt = load_default()
        runtime = GroundingRuntime.from_model(model, opt, dtype=args.dtype, chunk=args.chunk)
        path = f"chunked {args.dtype} runtime on the torch backend"
    demo = demo_video(args.minutes, args.seed, args.queries)
    video, queries, truths, fps, duration = (demo[k] for k in ("video", "queries", "truths", "fps", "duration"))
    print(f"synthetic video {demo['id']}: {len(video)} clips ({duration / 60:.1f} min), {len(queries)} queries; "
          "embedded default (the tiny config trained on ~1-minute videos of this synthetic world)")

    def run_runtime():
        return runtime.ground(video, queries, fps=fps, duration=duration)

    runtime.progress = sys.stderr.isatty()  # a bar over levels while it runs
    results, t_runtime, mem_runtime = measure(run_runtime)
    runtime.progress = False
    eager_results = t_eager = mem_eager = None
    run_eager = args.eager if args.eager is not None else args.minutes <= EAGER_UP_TO_MIN
    if run_eager:
        from hieramamba.inference import Grounder

        model, opt = load_default()
        grounder = Grounder(model, opt)
        eager_results, t_eager, mem_eager = measure(
            lambda: grounder.ground(video, queries, fps=fps, duration=duration))

    print(f"groundings ({path}):")
    for i, (segs, truth) in enumerate(zip(results, truths)):
        print(f"  query {i}: \"{demo['sentences'][i]}\"   true moment {truth[0]:.1f}–{truth[1]:.1f} s")
        for rank, s in enumerate(segs[:TOP_SHOWN]):
            iou = float(segment_iou(np.array([s.start_sec, s.end_sec]), np.array(truth)))
            mark = "✓" if iou >= 0.5 else " "
            print(f"    {mark} #{rank + 1}  {s.start_sec:8.2f} s – {s.end_sec:8.2f} s   score {s.score:.3f}   "
                  f"IoU {iou:.2f}")
    top1, top5 = hits(results, truths, 0.5, 1), hits(results, truths, 0.5, 5)
    print("summary:")
    print(f"  hits at IoU 0.5: top-1 {sum(top1)}/{len(top1)}, top-5 {sum(top5)}/{len(top5)}")

    def mem(x):
        return "not measured" if x is None else f"{x[0]:.0f} MB (+{x[1]:.0f} MB while grounding)"

    print(f"  chunked runtime: {t_runtime:.3f} s, peak RSS {mem(mem_runtime)}")
    if run_eager:
        agree = top1_agreement(results, eager_results)
        print(f"  eager PyTorch fp32 (whole video): {t_eager:.3f} s, peak RSS {mem(mem_eager)}; runtime "
              f"{t_eager / t_runtime:.2f}x eager")
        print(f"  top-1 segment same as eager for {sum(agree)}/{len(agree)} queries")
    else:
        print(f"  eager PyTorch: skipped for a video over {EAGER_UP_TO_MIN} min (its memory grows with the "
              "video; the runtime's does not); pass --eager to run it")
    return 0


def register(sub) -> None:
    from hieramamba.runtime.scheduler import WHOLE_LEVEL_TOKENS

    p = sub.add_parser("demo", help="ground queries in a long synthetic video with the embedded trained default")
    p.add_argument("--minutes", type=positive_float, default=30.0, help="video length (default 30 minutes)")
    p.add_argument("--seed", type=int, default=0, help="which synthetic video (index in the generator)")
    p.add_argument("--queries", type=positive_int, default=5, help="at most this many queries")
    p.add_argument("--chunk", type=positive_int, help="chunked runtime: level tokens per chunk (default: the "
                   f"runtime's, whole levels up to {WHOLE_LEVEL_TOKENS} level-0 tokens)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="chunked runtime backend (onnxruntime: the exported bundle, cached)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="runtime precision")
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--eager", action=argparse_bool(), default=None,
                   help=f"also run eager PyTorch (default: for videos up to {EAGER_UP_TO_MIN} min)")
    p.set_defaults(func=cmd_demo)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction
