"""Records the level outputs that ``tests/test_level_outputs_recorded.py`` compares against.

Run once, before a structural change, from the repository root:

    python3 tests/record_level_outputs.py
    python3 tests/record_level_outputs.py --default-only   # a retrained default: re-record its
                                                          # arrays, keep the small model's

It writes ``tests/data/level_outputs_recorded.npz``: for the embedded default (and the sha256 of
its weights, so a retrained default is noticed) and for the tests' small random model, the
per-level logits / offsets of eager PyTorch, the chunked torch backend and a chunked fp32 ONNX
Runtime bundle on a fixed synthetic input, all on one torch thread and with torch's and oneDNN's
CPU kernels pinned to AVX2 (``PINNED_CPU_KERNELS``: the kernels chosen per instruction set differ
in the last bits, so an AVX-512 machine would compute other bits than the AVX2 machine the small
model's arrays were recorded on; every x86-64 CI machine has AVX2). The recording is what the
code computed at the time; the test asserts that later code still computes it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent / "data"
# Read when torch starts: set in a fresh process (``pinned_cpu_kernels``).
PINNED_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
sys.path.insert(0, str(HERE.parent))

CLIPS = 203          # not a multiple of any pad multiple: padding and a partial last pair
QUERY_TOKENS = (7, 12, 3)
CHUNK = 16           # several chunks per level
SEED = 5


def pinned_cpu_kernels() -> bool:
    """Whether this process runs with ``PINNED_CPU_KERNELS``."""
    return all(os.environ.get(k) == v for k, v in PINNED_CPU_KERNELS.items())


def cpu_has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def fixed_inputs(vid_dim: int, text_dim: int):
    g = np.random.default_rng(SEED)
    video = g.standard_normal((CLIPS, vid_dim)).astype(np.float32)
    queries = [g.standard_normal((n, text_dim)).astype(np.float32) for n in QUERY_TOKENS]
    return video, queries


def level_arrays(results, prefix: str) -> dict:
    out = {}
    for q, (logits, offsets, _masks) in enumerate(results):
        for level, (lg, of) in enumerate(zip(logits, offsets)):
            out[f"{prefix}/q{q}/l{level}/logits"] = np.asarray(lg, np.float64)
            out[f"{prefix}/q{q}/l{level}/offsets"] = np.asarray(of, np.float64)
    return out


def record_model(name: str, model, opt, workdir: Path) -> dict:
    from hieramamba.export.stages import export_bundle
    from hieramamba.inference import Grounder
    from hieramamba.runtime import GroundingRuntime

    video, queries = fixed_inputs(model.vid_in_dim, model.text_in_dim)
    out = {}
    out.update(level_arrays(Grounder(model, opt).level_outputs(video, queries), f"{name}/eager"))
    chunked = GroundingRuntime.from_model(model, opt, chunk=CHUNK)
    out.update(level_arrays(chunked.level_outputs(video, queries), f"{name}/chunked_torch"))
    bundle = workdir / f"{name}_bundle"
    export_bundle(model, opt, bundle, dtype="float32")
    ort = GroundingRuntime.load(bundle, chunk=CHUNK, threads=1)
    out.update(level_arrays(ort.level_outputs(video, queries), f"{name}/ort_fp32"))
    return out


def main(default_only: bool = False) -> None:
    from conftest import small_model  # tests/conftest.py

    from hieramamba.checkpoint import default_experiment_dir, load_default

    torch.set_num_threads(1)
    weights = default_experiment_dir() / "models" / "last.pth"
    arrays = {"default_weights_sha256": np.array(hashlib.sha256(weights.read_bytes()).hexdigest())}
    if default_only:  # the small model's arrays stay as recorded before the structural change
        with np.load(HERE / "level_outputs_recorded.npz") as old:
            arrays.update({k: old[k] for k in old.files if k.startswith("small/")})
    with tempfile.TemporaryDirectory() as tmp:
        model, opt = load_default()
        arrays.update(record_model("default", model, opt, Path(tmp)))
        if not default_only:
            model, opt = small_model()
            arrays.update(record_model("small", model, opt, Path(tmp)))
    np.savez_compressed(HERE / "level_outputs_recorded.npz", **arrays)
    print(f"wrote {len(arrays)} arrays to {HERE / 'level_outputs_recorded.npz'}")


if __name__ == "__main__":
    if not pinned_cpu_kernels():  # again, in a process whose torch starts with the pinned kernels
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **PINNED_CPU_KERNELS})
    main(default_only="--default-only" in sys.argv[1:])
