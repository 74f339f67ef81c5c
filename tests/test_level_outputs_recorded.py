"""Level outputs of the embedded default and of the small test model, against values recorded
before the structural change of issue 15 (``tests/record_level_outputs.py``): eager and
chunked torch bitwise on CPU fp32 (one torch thread, torch's and oneDNN's kernels pinned to AVX2
as recorded: each test runs its comparison in a fresh process started with
``PINNED_CPU_KERNELS``), the fp32 ORT bundle within fp32 rounding."""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from record_level_outputs import CHUNK, PINNED_CPU_KERNELS, cpu_has_avx2, fixed_inputs, pinned_cpu_kernels  # noqa: E402

RECORDED = HERE / "data" / "level_outputs_recorded.npz"


def check(recorded, prefix, results, exact):
    n = 0
    for q, (logits, offsets, _masks) in enumerate(results):
        for level, (lg, of) in enumerate(zip(logits, offsets)):
            for kind, got in (("logits", lg), ("offsets", of)):
                want = recorded[f"{prefix}/q{q}/l{level}/{kind}"]
                if exact:
                    np.testing.assert_array_equal(np.asarray(got, np.float64), want,
                                                  err_msg=f"{prefix} q{q} l{level} {kind}")
                else:
                    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, np.abs(want).max()),
                                               err_msg=f"{prefix} q{q} l{level} {kind}")
                n += 1
    assert n == len([k for k in recorded.files if k.startswith(prefix + "/")])


def run_paths(recorded, name, model, opt, bundle_dir):
    from hieramamba.inference import Grounder
    from hieramamba.runtime import GroundingRuntime

    video, queries = fixed_inputs(model.vid_in_dim, model.text_in_dim)
    check(recorded, f"{name}/eager", Grounder(model, opt).level_outputs(video, queries), exact=True)
    chunked = GroundingRuntime.from_model(model, opt, chunk=CHUNK)
    check(recorded, f"{name}/chunked_torch", chunked.level_outputs(video, queries), exact=True)
    ort = GroundingRuntime.load(bundle_dir, chunk=CHUNK, threads=1)
    check(recorded, f"{name}/ort_fp32", ort.level_outputs(video, queries), exact=False)


def compare(which: str, bundle_dir) -> None:
    """In the pinned process: one torch thread, HydraScan on CPU by the C++ kernel (the default
    when the library is built), as recorded."""
    import torch

    from hieramamba.ops.hydra_scan import op

    assert op.register_native_cpu_kernel(required=True)
    torch.set_num_threads(1)
    recorded = np.load(RECORDED)
    if which == "small":
        from conftest import small_model

        model, opt = small_model()
        run_paths(recorded, "small", model, opt, bundle_dir)
        return
    from hieramamba.checkpoint import default_experiment_dir, load_default
    from hieramamba.export.stages import export_bundle

    weights = default_experiment_dir() / "models" / "last.pth"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == str(recorded["default_weights_sha256"]), (
        "the embedded default changed: re-record with `python3 tests/record_level_outputs.py --default-only` "
        "(on code whose outputs are known to be right) in the same commit")
    model, opt = load_default()
    with tempfile.TemporaryDirectory() as tmp:
        export_bundle(model, opt, Path(tmp) / "bundle", dtype="float32")
        run_paths(recorded, "default", model, opt, Path(tmp) / "bundle")


def in_pinned_process(which: str, bundle_dir=None) -> None:
    if not cpu_has_avx2():
        pytest.skip("recorded with torch's AVX2 kernels; this CPU has no AVX2")
    from hieramamba.native_library import load_native_library

    if load_native_library() is None:
        pytest.skip("libhieramamba_plugins is not built: the recording ran the C++ scan kernel")
    res = subprocess.run([sys.executable, __file__, which, str(bundle_dir or "")], capture_output=True, text=True,
                         env={**os.environ, **PINNED_CPU_KERNELS}, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


def test_small_model_level_outputs_as_recorded(bundle):
    in_pinned_process("small", bundle[0])


def test_embedded_default_level_outputs_as_recorded():
    pytest.importorskip("onnxruntime")
    in_pinned_process("default")


if __name__ == "__main__":
    assert pinned_cpu_kernels(), "run through the tests (they set PINNED_CPU_KERNELS)"
    compare(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None)
