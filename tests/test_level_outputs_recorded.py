"""Level outputs of the embedded default and of the small test model, against values recorded
before the structural change of issue 15 (``tests/record_level_outputs.py``): eager and
chunked torch bitwise on CPU fp32 (one torch thread, as recorded), the fp32 ORT bundle within
fp32 rounding."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from record_level_outputs import CHUNK, fixed_inputs

RECORDED = Path(__file__).resolve().parent / "data" / "level_outputs_recorded.npz"


@pytest.fixture(scope="module")
def recorded():
    return np.load(RECORDED)


@pytest.fixture()
def one_thread():
    """As recorded: one torch thread and HydraScan on CPU by the C++ kernel (the default when
    the library is built); whatever other tests left registered is restored after."""
    import importlib

    op = importlib.import_module("hieramamba.ops.hydra_scan.op")
    saved = op._KERNELS.get("cpu")
    if not op.register_native_cpu_kernel(required=False):
        pytest.skip("libhieramamba_plugins is not built: the recording ran the C++ scan kernel")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if saved is None:
        op.unregister_kernel("cpu")
    else:
        op._KERNELS["cpu"] = saved


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


def test_small_model_level_outputs_as_recorded(recorded, bundle, one_thread):
    bundle_dir, model, opt = bundle
    run_paths(recorded, "small", model, opt, bundle_dir)


def test_embedded_default_level_outputs_as_recorded(recorded, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from hieramamba.checkpoint import default_experiment_dir, load_default
    from hieramamba.export.stages import export_bundle

    weights = default_experiment_dir() / "models" / "last.pth"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == str(recorded["default_weights_sha256"]), (
        "the embedded default changed: re-record with tests/record_level_outputs.py (on code "
        "whose outputs are known to be right) in the same commit")
    model, opt = load_default()
    export_bundle(model, opt, tmp_path / "bundle", dtype="float32")
    run_paths(recorded, "default", model, opt, tmp_path / "bundle")
