"""``hieramamba`` command line: ``configs``, ``ground``, ``demo``, ``bench``, ``profile``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import HieraMambaError


def _load_array(path: str):
    import numpy as np

    from .errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"feature file not found: {p}")
    if p.suffix == ".pt":
        import torch

        return torch.load(p, map_location="cpu", weights_only=True)
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{p}: not a readable .npy file ({exc})") from exc


def cmd_configs(args) -> int:
    from .config import PACKAGED_CONFIGS, load_config
    from .model import build_model

    for name in PACKAGED_CONFIGS:
        opt = load_config(name)
        m = opt["model"]
        n = sum(v.numel() for v in build_model(opt).state_dict().values()) if args.params else None
        print(f"{name:6s} video {m['vid_net']['in_dim']:>4d}-d → {m['vid_net']['embd_dim']:>3d}, "
              f"text {m['text_net']['in_dim']:>3d}-d, levels {m['num_fpn_levels']}, stride {m['vid_stride']}, "
              f"early_fusion {m.get('early_fusion', True)}" + (f", {n:,} params" if n else ""))
    return 0


def _print_groundings(results, truths=None):
    for i, segs in enumerate(results):
        truth = f"   (true moment {truths[i][0]:.1f}–{truths[i][1]:.1f} s)" if truths else ""
        print(f"query {i}:{truth}")
        for rank, s in enumerate(segs):
            print(f"  #{rank + 1}  {s.start_sec:8.2f} s – {s.end_sec:8.2f} s   score {s.score:.4f}")


def cmd_ground(args) -> int:
    from .errors import InputError

    if (args.bundle is None) == (args.experiment is None):
        raise InputError("ground: pass exactly one of --experiment (PyTorch) or --bundle (exported runtime)")
    if (args.cuda_graphs or args.device != "cpu") and args.backend != "torch":
        raise InputError("ground: --device and --cuda-graphs are options of --backend torch")
    video = _load_array(args.video)
    queries = [_load_array(q) for q in args.query]
    chunked = dict(text_overflow=args.text_overflow, progress=args.progress or len(video) > 8192)
    chunked.update({k: v for k, v in (("chunk", args.chunk), ("max_batch", args.max_batch)) if v is not None})
    if args.bundle is not None:
        from hieramamba.runtime import GroundingRuntime  # torch-free path (but for tensorrt)

        if args.backend == "tensorrt":
            extra = dict(engines=args.engines, plugin_library=args.plugin)
        else:
            extra = dict(scan_kernel=args.scan_kernel)
        grounder = GroundingRuntime.load(args.bundle, backend=args.backend or "onnxruntime", **extra, **chunked)
    elif args.backend == "torch":
        from hieramamba.checkpoint import load_experiment
        from hieramamba.runtime import GroundingRuntime

        model, opt = load_experiment(args.experiment, args.ckpt, mask_semantics=args.mask_semantics)
        grounder = GroundingRuntime.from_model(model, opt, device=args.device, dtype=args.dtype,
                                               cuda_graphs=args.cuda_graphs, **chunked)
    elif args.backend is None:
        from .inference import Grounder

        grounder = Grounder.from_experiment(args.experiment, args.ckpt, mask_semantics=args.mask_semantics,
                                            text_overflow=args.text_overflow)
    else:
        raise InputError(f"ground: --backend {args.backend} runs an exported --bundle, not an --experiment")
    t0 = time.perf_counter()
    results = grounder.ground(video, queries, fps=args.fps, duration=args.duration)
    elapsed = time.perf_counter() - t0
    payload = {"video": args.video, "queries": [
        {"query": q, "segments": [[s.start_sec, s.end_sec, s.score] for s in segs]}
        for q, segs in zip(args.query, results)], "seconds": elapsed}
    if args.out:
        # Written to a sibling temp file and renamed: never a half-written JSON.
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(out)
    else:
        _print_groundings(results)
    print(f"grounded {len(queries)} queries in {elapsed:.3f} s", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """Ground the queries of a synthetic long video with the embedded default (the tiny config
    trained on the synthetic set, hieramamba/assets/tiny). The video comes from the same generator
    and "world" (scene prototypes, text map) as the default's training data but is not one of its
    videos; every query is printed with its true moment."""
    import tempfile

    import numpy as np

    from .checkpoint import default_synthetic_settings, load_default
    from .data import make_synthetic
    from .inference import Grounder

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
    from .metrics import segment_iou
    from .runtime import GroundingRuntime

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
    _print_groundings(results, truths)
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


def main(argv=None) -> int:
    from hieramamba.runtime.bundle import SCAN_KERNEL_CHOICES

    ap = argparse.ArgumentParser(prog="hieramamba", description="HieraMamba video grounding tools")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("configs", help="list the packaged configurations")
    p.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("ground", help="ground query features in one video with an experiment folder")
    p.add_argument("--experiment", help="folder with opt.yaml and models/<ckpt>.pth")
    p.add_argument("--bundle", help="exported runtime bundle (hieramamba.export.stages) instead of --experiment")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"],
                   help="chunked runtime backend (default: eager PyTorch for --experiment, onnxruntime for --bundle)")
    p.add_argument("--chunk", type=int, help="chunked runtime: level tokens per chunk (default 2048; "
                   "tensorrt: the engines' chunk)")
    p.add_argument("--max-batch", type=int, help="chunked runtime: most queries per batch (default 16, "
                   "at most the engines' max batch)")
    p.add_argument("--engines", help="--backend tensorrt: engines folder (default <bundle>/trt, "
                   "from `hieramamba build-engines`)")
    p.add_argument("--plugin", help="--backend tensorrt: HydraScan plugin library "
                   "(default build/libhieramamba_trt_plugin.so or $HIERAMAMBA_TRT_PLUGIN)")
    p.add_argument("--scan-kernel", default="auto", choices=SCAN_KERNEL_CHOICES,
                   help="--backend onnxruntime: run HydraScan nodes with the C++ kernel of the plugin "
                        "library (native), their ONNX function body (graph), or native when built (auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="--backend torch precision")
    p.add_argument("--device", default="cpu", help="--backend torch device (e.g. cuda, cuda:1)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--backend torch on CUDA: replay each stage as a CUDA graph (captured per shape)")
    p.add_argument("--progress", action="store_true", help="progress bar (on by default for > 8192 clips)")
    p.add_argument("--ckpt", default="last")
    p.add_argument("--video", required=True, help="(num_clips, Dv) features, .npy or .pt")
    p.add_argument("--query", required=True, action="append", help="(num_tokens, Dt) features; repeatable")
    p.add_argument("--fps", type=float, required=True)
    p.add_argument("--duration", type=float, help="video duration in seconds (default: end of last clip)")
    p.add_argument("--mask-semantics", default="official", choices=["official", "per_sample"])
    p.add_argument("--text-overflow", default="error", choices=["error", "truncate"])
    p.add_argument("--out", help="write JSON here instead of printing")
    p.set_defaults(func=cmd_ground)

    p = sub.add_parser("demo", help="ground queries in a synthetic long video with the embedded trained default")
    # 3 min by default: the default's synthetic world has 6 scenes and was trained on ~1 min
    # windows; much longer videos have few unambiguous queries (and are out of distribution)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0, help="which synthetic video (index in the generator)")
    p.add_argument("--queries", type=int, default=5, help="at most this many queries")
    p.add_argument("--chunk", type=int, default=512, help="chunked runtime: level tokens per chunk")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="chunked runtime backend (onnxruntime: the exported bundle, cached)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="runtime precision")
    p.set_defaults(func=cmd_demo)

    from .train_cli import add_subcommands as add_training_subcommands

    add_training_subcommands(sub)  # train, eval, make-synthetic (train_cli.py)

    from .profiling.commands import add_subcommands as add_profiling_subcommands

    add_profiling_subcommands(sub)  # bench, profile (profiling/commands.py)

    from .export.cli import register as add_export_subcommands

    add_export_subcommands(sub)  # export, export-bundle, check-onnx, build-engine(s) (export/cli.py)

    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except HieraMambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
