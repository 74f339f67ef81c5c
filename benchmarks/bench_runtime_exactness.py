"""Chunked vs whole-sequence eager on long inputs (not a CI test): max relative error of the
head outputs per config, Ego4D- and MAD-shaped (official levels/strides/windows/PE, shrunk
widths so that eager fits on a CPU), random weights.

    python benchmarks/bench_runtime_exactness.py --configs ego4d,mad --clips 32768 --chunk 2048
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hieramamba.config import packaged_config_path, parse_config, read_yaml
from hieramamba.model import build_model, widen_layer_scales
from hieramamba.runtime.backends.torch import TorchBackend
from hieramamba.runtime.scheduler import ChunkScheduler


def shrunk_model(name, width):
    raw = read_yaml(packaged_config_path(name))
    m = raw["model"]
    m["text_net"].update(in_dim=width, embd_dim=width)
    m["vid_net"].update(in_dim=width, embd_dim=width, mamba_headdim=16, mamba_dstate=16)
    opt = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(opt).eval()
    widen_layer_scales(model)  # LayerScales at 1e-4 would hide most of each block
    return model, opt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="ego4d,mad")
    ap.add_argument("--clips", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--queries", type=int, default=2)
    args = ap.parse_args()
    for name in args.configs.split(","):
        model, opt = shrunk_model(name, args.width)
        backend = TorchBackend(model, opt)
        plan = backend.plan
        pm = plan.pad_multiple
        valid = args.clips - 7
        padded = -(-valid // pm) * pm
        g = torch.Generator().manual_seed(0)
        vid = torch.randn(1, model.vid_in_dim, padded, generator=g)
        vid[..., valid:] = 0
        vmask = (torch.arange(padded) < valid)[None, None]
        tl = opt["eval"].get("max_text_len", 24)
        text = torch.randn(args.queries, model.text_in_dim, tl, generator=g)
        tmask = torch.ones(args.queries, 1, tl, dtype=torch.bool)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = model.forward_levels(vid, vmask, text, tmask)
        t_eager = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = ChunkScheduler(plan, backend, args.chunk, attn_rows=256).run(
            vid[0].numpy(), valid, text.numpy(), tmask.numpy(), official_batch=args.queries)
        t_chunk = time.perf_counter() - t0
        worst = 0.0
        for lvl in range(plan.num_levels):
            for a, b in ((out[0][lvl], ref[0][lvl]), (out[1][lvl], ref[1][lvl])):
                b = b.double().numpy()
                worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
        print(f"{name}: {valid} clips (padded {padded}), {plan.num_levels} levels, chunk {args.chunk}: "
              f"max rel error {worst:.2e}; eager {t_eager:.1f} s, chunked {t_chunk:.1f} s", flush=True)


if __name__ == "__main__":
    main()
