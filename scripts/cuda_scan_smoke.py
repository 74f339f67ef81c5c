"""One small call of the CUDA HydraScan kernel per plan kind, checked against the C++ CPU kernel.

Meant to run under NVIDIA's compute-sanitizer (scripts/gpu_checks.sh does):

    compute-sanitizer --tool racecheck python scripts/cuda_scan_smoke.py
    compute-sanitizer --tool synccheck python scripts/cuda_scan_smoke.py

Shapes are small (a few blocks) so the instrumented run stays short; L is not a multiple of the
chunk so partial chunks and chunk edges are exercised. Exit status 1 when a result is off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from hieramamba.ops.hydra_scan import native

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import scan_oracle  # noqa: E402  (the tests' HydraScan inputs)

# (name, x dtype, P, N): tensor cores (16-bit, multiples of 16) and the FMA plans.
CASES = [("fp16 wmma Q=64", torch.float16, 64, 64), ("bf16 wmma", torch.bfloat16, 32, 16),
         ("fp32 fma Q=32", torch.float32, 64, 64), ("fp16 fma", torch.float16, 8, 24)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def inputs(dtype, P, N, L=150, B=1, H=2, G=1, seed=0):
    """The tests' HydraScan inputs (tests/scan_oracle.py) with initial states."""
    return scan_oracle.make_inputs(B, L, H, P, G, N, seed=seed, states=True, dtype=dtype)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    worst_ok = True
    # Then longer state chunks (several column tiles per block) over several chunks.
    runs = [(name, dtype, P, N, 150, "1") for name, dtype, P, N in CASES] + [
        ("fp16 wmma L=700 T=4", torch.float16, 64, 64, 700, "4"),
        ("fp16 wmma L=700 T=2", torch.float16, 64, 64, 700, "2"),
        ("fp32 fma L=700 T=2", torch.float32, 64, 64, 700, "2")]
    for name, dtype, P, N, L, tiles in runs:
        os.environ[native.TILES_PER_CHUNK_ENV] = tiles
        t = inputs(dtype, P, N, L=L)
        want = native.native_hydra_scan_cpu(**t)
        got = native.native_hydra_scan_cuda(**{k: v.cuda() for k, v in t.items()})
        torch.cuda.synchronize()
        errs = []
        for g, w in zip(got, want):
            w = w.float()
            errs.append(((g.cpu().float() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item())
        ok = max(errs) <= TOLERANCE[dtype]
        worst_ok &= ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:20s} rel. err y={errs[0]:.2e} state_f={errs[1]:.2e} "
              f"state_b={errs[2]:.2e}")
    return 0 if worst_ok else 1


if __name__ == "__main__":
    sys.exit(main())
