"""``hieramamba`` command line: ``configs``, ``ground``, ``demo``."""

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
    from .inference import Grounder

    grounder = Grounder.from_experiment(args.experiment, args.ckpt, mask_semantics=args.mask_semantics,
                                        text_overflow=args.text_overflow)
    video = _load_array(args.video)
    queries = [_load_array(q) for q in args.query]
    t0 = time.perf_counter()
    results = grounder.ground(video, queries, fps=args.fps, duration=args.duration)
    elapsed = time.perf_counter() - t0
    payload = {"video": args.video, "queries": [
        {"query": q, "segments": [[s.start_sec, s.end_sec, s.score] for s in segs]}
        for q, segs in zip(args.query, results)], "seconds": elapsed}
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2))
    else:
        _print_groundings(results)
    print(f"grounded {len(queries)} queries in {elapsed:.3f} s", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """A synthetic video whose queries describe one recurring scene, grounded by the tiny
    config. Until the trained embedded default ships, the weights are random: the command
    shows the end-to-end path and its latency, not grounding quality."""
    import numpy as np
    import torch

    from .config import load_config
    from .inference import Grounder
    from .model import build_model

    torch.manual_seed(0)
    opt = load_config("tiny")
    model = build_model(opt)
    rng = np.random.default_rng(args.seed)
    fps, stride = 30.0, 16
    n_clips = int(args.minutes * 60 * fps / stride)
    scenes = rng.standard_normal((6, model.vid_in_dim)).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, n_clips), size=min(11, n_clips - 1), replace=False))
    labels = np.zeros(n_clips, dtype=int)
    for k, c in enumerate(cuts):
        labels[c:] = (k + 1) % len(scenes)
    video = scenes[labels] + 0.3 * rng.standard_normal((n_clips, model.vid_in_dim)).astype(np.float32)
    bounds = np.concatenate(([0], cuts, [n_clips]))
    picks = rng.choice(len(bounds) - 1, size=min(3, len(bounds) - 1), replace=False)
    queries, truths = [], []
    for p in picks:
        scene = scenes[labels[bounds[p]]]
        queries.append(scene[None] + 0.3 * rng.standard_normal((8, model.text_in_dim)).astype(np.float32))
        truths.append(((bounds[p] * stride + 16) / fps, (bounds[p + 1] * stride + 16) / fps))
    grounder = Grounder(model, opt)
    t0 = time.perf_counter()
    results = grounder.ground(video, queries, fps=fps)
    elapsed = time.perf_counter() - t0
    print(f"synthetic video: {n_clips} clips ({args.minutes:g} min), {len(queries)} queries, "
          f"tiny config, RANDOM weights (no trained default yet)")
    _print_groundings(results, truths)
    print(f"eager PyTorch fp32 on CPU: {elapsed:.3f} s for the whole video")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hieramamba", description="HieraMamba video grounding tools")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("configs", help="list the packaged configurations")
    p.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("ground", help="ground query features in one video with an experiment folder")
    p.add_argument("--experiment", required=True, help="folder with opt.yaml and models/<ckpt>.pth")
    p.add_argument("--ckpt", default="last")
    p.add_argument("--video", required=True, help="(num_clips, Dv) features, .npy or .pt")
    p.add_argument("--query", required=True, action="append", help="(num_tokens, Dt) features; repeatable")
    p.add_argument("--fps", type=float, required=True)
    p.add_argument("--duration", type=float, help="video duration in seconds (default: end of last clip)")
    p.add_argument("--mask-semantics", default="official", choices=["official", "per_sample"])
    p.add_argument("--text-overflow", default="error", choices=["error", "truncate"])
    p.add_argument("--out", help="write JSON here instead of printing")
    p.set_defaults(func=cmd_ground)

    p = sub.add_parser("demo", help="end-to-end run on a synthetic video (tiny config)")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    from .export.cli import register as add_export_subcommands

    add_export_subcommands(sub)  # export, check-onnx, build-engine (export/cli.py)

    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except HieraMambaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
