"""``hieramamba configs`` and ``hieramamba ground``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hieramamba.errors import InputError

from .common import (add_device, add_experiment, add_mask_semantics, add_scan_kernel, add_text_overflow,
                     add_threads, load_features, positive_int)


def cmd_configs(args) -> int:
    from hieramamba.config import PACKAGED_CONFIGS, load_config
    from hieramamba.model import build_model

    for name in PACKAGED_CONFIGS:
        opt = load_config(name)
        m = opt["model"]
        n = sum(v.numel() for v in build_model(opt).state_dict().values()) if args.params else None
        print(f"{name:6s} video {m['vid_net']['in_dim']:>4d}-d → {m['vid_net']['embd_dim']:>3d}, "
              f"text {m['text_net']['in_dim']:>3d}-d, levels {m['num_fpn_levels']}, stride {m['vid_stride']}, "
              f"early_fusion {m.get('early_fusion', True)}" + (f", {n:,} params" if n else ""))
    return 0


def print_groundings(results, truths=None):
    for i, segs in enumerate(results):
        truth = f"   (true moment {truths[i][0]:.1f}–{truths[i][1]:.1f} s)" if truths else ""
        print(f"query {i}:{truth}")
        for rank, s in enumerate(segs):
            print(f"  #{rank + 1}  {s.start_sec:8.2f} s – {s.end_sec:8.2f} s   score {s.score:.4f}")


class ServerGrounder:
    """``ground --server URL``: the same call answered by a running ``hieramamba serve`` (or any
    Triton serving ``hieramamba_ground``) over HTTP or gRPC."""

    def __init__(self, url: str):
        from hieramamba.serving.client import GroundingClient

        self.client = GroundingClient(url)

    def ground(self, video, queries, fps, duration=None):
        from hieramamba.pipeline import Segment

        return [[Segment(*s) for s in segs] for segs in self.client.ground(video, queries, fps, duration)]


def make_grounder(args, num_clips: int):
    """The pipeline the options ask for: eager PyTorch (``--experiment``), the chunked runtime on
    the torch backend (``--experiment --backend torch``) or on a bundle (``--bundle``), or a server
    (``--server``)."""
    if sum(x is not None for x in (args.bundle, args.experiment, args.server)) != 1:
        raise InputError("ground: pass exactly one of --experiment (PyTorch), --bundle (exported runtime) or "
                         "--server (a running hieramamba serve)")
    if args.server is not None:
        if any(v is not None for v in (args.backend, args.chunk, args.max_batch, args.spill_mb, args.spill_dir)):
            raise InputError("ground: --backend, --chunk, --max-batch and --spill-* are the server's settings "
                             "with --server")
        return ServerGrounder(args.server)
    if args.cuda_graphs and args.backend != "torch":
        raise InputError("ground: --cuda-graphs is an option of --backend torch")
    if (args.spill_mb is not None or args.spill_dir is not None) \
            and not (args.bundle is not None and args.backend in (None, "onnxruntime")):
        raise InputError("ground: --spill-mb/--spill-dir are options of a --bundle on onnxruntime (the torch "
                         "and tensorrt backends keep levels as tensors, eager PyTorch the whole video)")
    chunked = dict(text_overflow=args.text_overflow, progress=args.progress or num_clips > 8192)
    chunked.update({k: v for k, v in (("chunk", args.chunk), ("max_batch", args.max_batch),
                                      ("spill_mb", args.spill_mb), ("spill_dir", args.spill_dir)) if v is not None})
    if args.bundle is not None:
        from hieramamba.runtime import GroundingRuntime  # torch-free path (but for tensorrt)

        backend = args.backend or "onnxruntime"
        if backend == "tensorrt":
            extra = dict(engines=args.engines, plugin_library=args.plugin,
                         device="cuda" if args.device == "auto" else args.device)
        elif backend == "onnxruntime":
            if args.device not in ("auto", "cpu"):
                raise InputError("ground: --device is not an option of the onnxruntime backend (it runs on the CPU)")
            extra = dict(scan_kernel=args.scan_kernel, threads=args.threads)
        else:
            raise InputError("ground: --backend torch runs an --experiment, not a --bundle")
        return GroundingRuntime.load(args.bundle, backend=backend, **extra, **chunked)
    from hieramamba.checkpoint import load_experiment

    model, opt = load_experiment(args.experiment, args.ckpt, mask_semantics=args.mask_semantics)
    if args.backend == "torch":
        from hieramamba.runtime import GroundingRuntime

        return GroundingRuntime.from_model(model, opt, device=args.device, dtype=args.dtype,
                                           cuda_graphs=args.cuda_graphs, **chunked)
    if args.backend is not None:
        raise InputError(f"ground: --backend {args.backend} runs an exported --bundle, not an --experiment")
    from hieramamba.inference import Grounder

    return Grounder(model, opt, device=args.device, text_overflow=args.text_overflow)


def cmd_ground(args) -> int:
    from .common import apply_threads

    apply_threads(args)
    if args.out:
        from hieramamba.artifacts import check_output_location

        check_output_location(args.out, "--out")
    # The chunked runtime reads the video's rows window by window; eager and --server take arrays.
    video = load_features(args.video, rows_on_demand=args.bundle is not None or args.backend == "torch")
    queries = [load_features(q) for q in args.query]
    grounder = make_grounder(args, len(video))
    t0 = time.perf_counter()
    results = grounder.ground(video, queries, fps=args.fps, duration=args.duration)
    elapsed = time.perf_counter() - t0
    payload = {"video": args.video, "queries": [
        {"query": q, "segments": [[s.start_sec, s.end_sec, s.score] for s in segs]}
        for q, segs in zip(args.query, results)], "seconds": elapsed}
    if args.out:
        from hieramamba.artifacts import write_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.out), json.dumps(payload, indent=2).encode())
    else:
        print_groundings(results)
    print(f"grounded {len(queries)} queries in {elapsed:.3f} s", file=sys.stderr)
    return 0


def register(sub) -> None:
    from hieramamba.runtime.scheduler import DEFAULT_CHUNK, WHOLE_LEVEL_TOKENS

    p = sub.add_parser("configs", help="list the packaged configurations")
    p.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("ground", help="ground query features in one video with an experiment folder or a bundle")
    add_experiment(p)
    p.add_argument("--bundle", help="exported runtime bundle (hieramamba export-bundle) instead of --experiment")
    p.add_argument("--server", help="a running server instead: http://HOST:PORT or grpc://HOST:PORT "
                                    "(hieramamba serve; docs/serving.md)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"],
                   help="chunked runtime backend (default: eager PyTorch for --experiment, onnxruntime for --bundle)")
    p.add_argument("--chunk", type=positive_int, help="chunked runtime: level tokens per chunk (default: a level "
                   f"whole up to {WHOLE_LEVEL_TOKENS} level-0 tokens, else {DEFAULT_CHUNK}; tensorrt: the engines' chunk)")
    p.add_argument("--max-batch", type=positive_int, help="chunked runtime: most queries per batch (default 16, "
                   "at most the engines' max batch)")
    p.add_argument("--spill-mb", type=float, help="chunked runtime on onnxruntime: levels larger than this many "
                   "MB wait for the next level in a temporary file (default 16; memory flat in video length)")
    p.add_argument("--spill-dir", help="where those temporary files go (default: the system's temporary folder)")
    p.add_argument("--engines", help="--backend tensorrt: engines folder (default <bundle>/trt, "
                   "from `hieramamba build-engines`)")
    p.add_argument("--plugin", help="--backend tensorrt: HydraScan plugin library "
                   "(default build/libhieramamba_trt_plugin.so or $HIERAMAMBA_PLUGIN_LIB)")
    add_scan_kernel(p)
    add_threads(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="--backend torch precision")
    add_device(p)
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--backend torch on CUDA: replay each stage as a CUDA graph (captured per shape)")
    p.add_argument("--progress", action="store_true", help="progress bar (on by default for > 8192 clips)")
    p.add_argument("--video", required=True, help="(num_clips, Dv) features, .npy or .pt")
    p.add_argument("--query", required=True, action="append", help="(num_tokens, Dt) features; repeatable")
    p.add_argument("--fps", type=float, required=True)
    p.add_argument("--duration", type=float, help="video duration in seconds (default: end of last clip)")
    add_mask_semantics(p)
    add_text_overflow(p)
    p.add_argument("--out", help="write JSON here instead of printing")
    p.set_defaults(func=cmd_ground)
