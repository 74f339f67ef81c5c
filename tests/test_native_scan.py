"""Native HydraScan (plugins/): the C++ CPU kernel through the C ABI, its C++ unit tests, and a
compile check of the CUDA kernel.

The oracle is the naive float64 recurrence of tests/scan_oracle.py (REFERENCE §7), independent of
both the C++ code and ``hieramamba.ops.hydra_scan``. If the library is not built yet, the module
builds it with CMake into ``<repo>/build`` (the documented location) or skips when CMake or a
compiler is missing.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scan_oracle
from hieramamba import native_library
from hieramamba.errors import BackendUnavailableError, InputError
from hieramamba.ops.hydra_scan import native
from scan_oracle import ORDER, args, oracle, rel_err

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build"
KERNEL_CU = REPO / "plugins" / "hydra_scan" / "hydraScanKernel.cu"


# ------------------------------------------------------------------------------------------------
# Library (built on demand)
# ------------------------------------------------------------------------------------------------


def _run(cmd, timeout):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lib():
    loaded = native.load_native_library(required=False)
    if loaded is not None:
        return loaded
    if shutil.which("cmake") is None:
        pytest.skip("libhieramamba_plugins is not built and cmake is not installed "
                    f"(build it with: {native.BUILD_COMMAND})")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("libhieramamba_plugins is not built and no C++ compiler was found")
    configure = _run(["cmake", "-S", ".", "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"], 300)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    build = _run(["cmake", "--build", str(BUILD), "-j2"], 600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return native.load_native_library(required=True)


# ------------------------------------------------------------------------------------------------
# Oracle and data (tests/scan_oracle.py)
# ------------------------------------------------------------------------------------------------


def make_inputs(bsz, L, H, P, G, N, *, states, seed, dtype=torch.float32, dt_dtype=torch.float32):
    return scan_oracle.make_inputs(bsz, L, H, P, G, N, seed=seed, states=states, dtype=dtype, dt_dtype=dt_dtype)


# ------------------------------------------------------------------------------------------------
# CPU kernel vs oracle
# ------------------------------------------------------------------------------------------------

# (L, G, with initial states): every length of the brief, G = 1 and G > 1, with and without states.
CASES = [(1, 1, False), (1, 2, True), (2, 1, True), (2, 2, False), (17, 1, False), (17, 4, True),
         (300, 1, True), (300, 2, False), (1000, 2, True), (1000, 1, False), (5000, 1, False),
         (5000, 2, True)]


@pytest.mark.parametrize("L,G,states", CASES)
def test_cpu_kernel_matches_float64_oracle(lib, L, G, states):
    t = make_inputs(2, L, 4, 8, G, 16, states=states, seed=L * 10 + G)
    y, sf, sb = native.native_hydra_scan_cpu(*args(t))
    assert y.dtype == torch.float32 and sf.dtype == torch.float32 and sb.dtype == torch.float32
    assert y.shape == (2, L, 4, 8) and sf.shape == sb.shape == (2, 4, 8, 16)
    y_ref, sf_ref, sb_ref = oracle(*args(t))
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(sf, sf_ref) <= 1e-5
    assert rel_err(sb, sb_ref) <= 1e-5
    if L <= 2:  # the shift leaves nothing for L=1 and exactly one term per direction for L=2
        assert (L == 1) == bool((y == 0).all())


@pytest.mark.parametrize("dtype,dt_dtype,tol", [
    (torch.float16, torch.float32, 2e-3),
    (torch.float16, torch.float16, 2e-3),
    (torch.bfloat16, torch.float32, 1e-2),
    (torch.bfloat16, torch.bfloat16, 1e-2),
])
def test_half_inputs_fp32_math(lib, dtype, dt_dtype, tol):
    t = make_inputs(2, 300, 4, 8, 2, 16, states=True, seed=5, dtype=dtype, dt_dtype=dt_dtype)
    y, sf, sb = native.native_hydra_scan_cpu(*args(t))
    assert y.dtype == dtype and sf.dtype == torch.float32 and sb.dtype == torch.float32
    # The oracle sees the same rounded inputs, so only fp32 math and y's final rounding differ.
    y_ref, sf_ref, sb_ref = oracle(*args(t))
    assert rel_err(y, y_ref) <= tol
    assert rel_err(sf, sf_ref) <= 1e-5
    assert rel_err(sb, sb_ref) <= 1e-5


def test_mixed_param_dtypes_are_promoted(lib):
    t = make_inputs(1, 40, 4, 8, 1, 16, states=False, seed=3, dtype=torch.float16)
    t["A"] = t["A"].to(torch.float16)  # dt fp32 but A fp16: converted to fp32, not rejected
    y, _, _ = native.native_hydra_scan_cpu(*args(t))
    assert rel_err(y, oracle(*args(t))[0]) <= 2e-3


def test_thread_count_does_not_change_results(lib):
    t = make_inputs(3, 200, 4, 8, 2, 16, states=True, seed=11)
    one = native.native_hydra_scan_cpu(*args(t), num_threads=1)
    many = native.native_hydra_scan_cpu(*args(t), num_threads=5)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


# (B, L, H, P, G, N, states, dtype): the released P = N = 64, P past one 64-lane pass and with a
# masked tail, N with and without a remainder after its multiple of 4, N < 4, fp16 / bf16 inputs.
CODE_PATH_CASES = [(2, 300, 4, 64, 1, 64, True, "float32"), (1, 1000, 12, 64, 2, 64, False, "float32"),
                   (2, 17, 4, 8, 2, 16, True, "float32"), (1, 50, 3, 20, 1, 7, True, "float32"),
                   (1, 40, 2, 5, 1, 3, False, "float32"), (1, 64, 4, 80, 2, 65, True, "float32"),
                   (1, 1, 2, 16, 1, 64, True, "float32"), (2, 100, 4, 64, 2, 64, True, "float16"),
                   (1, 70, 2, 64, 1, 64, False, "bfloat16")]


def scan_code_path_outputs(out_path: str) -> None:
    """Run in a subprocess (``HIERAMAMBA_SCAN_CPU`` picks the code path when the library loads):
    every case of ``CODE_PATH_CASES`` checked against the float64 oracle, outputs saved for a
    bitwise comparison between the two paths."""
    lib = native.load_native_library(required=True)
    lib.hm_version.restype = ctypes.c_char_p
    saved = {"version": np.frombuffer(lib.hm_version(), np.uint8)}  # names the path in use
    for i, (B, L, H, P, G, N, states, dtype) in enumerate(CODE_PATH_CASES):
        t = make_inputs(B, L, H, P, G, N, states=states, seed=100 + i, dtype=getattr(torch, dtype))
        got = native.native_hydra_scan_cpu(*args(t), num_threads=2)
        for j, (g, want) in enumerate(zip(got, oracle(*args(t)))):
            tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype] if j == 0 else 1e-5
            assert rel_err(g, want) <= tol, (i, j)
            saved[f"{i}/{j}"] = g.float().numpy()
    np.savez(out_path, **saved)


def test_avx512_step_equals_the_portable_loop_bitwise(lib, tmp_path):
    """The CPU kernel's two code paths (hydraScanCpu.cpp: the portable loop, and on AVX-512 CPUs a
    step over 16 p per vector) give bitwise-equal outputs and final states, so eager results do
    not depend on the CPU's vector width (tests/test_level_outputs_recorded.py pins them)."""
    try:
        has_avx512 = " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        has_avx512 = False
    if not has_avx512:
        pytest.skip("this CPU has no AVX-512: only the portable loop exists here")
    outputs = {}
    for path in ("portable", "default"):
        env = {k: v for k, v in os.environ.items() if k != "HIERAMAMBA_SCAN_CPU"}
        if path == "portable":
            env["HIERAMAMBA_SCAN_CPU"] = "portable"
        out = tmp_path / f"{path}.npz"
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_native_scan; "
                f"test_native_scan.scan_code_path_outputs({str(out)!r})")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[path] = np.load(out)
    portable, default = outputs["portable"], outputs["default"]
    step = b"(avx512 scan step)"
    assert step in default["version"].tobytes() and step not in portable["version"].tobytes()
    keys = [k for k in portable.files if k != "version"]
    assert sorted(keys) == sorted(k for k in default.files if k != "version") and len(keys) == 3 * len(CODE_PATH_CASES)
    for key in keys:
        np.testing.assert_array_equal(default[key], portable[key], err_msg=key)


@pytest.mark.parametrize("L,cut,G,states", [(300, 120, 1, False), (301, 150, 2, True), (17, 1, 2, True)])
def test_chunked_composition_with_carried_states(lib, L, cut, G, states):
    """Two halves with carried states plus the shift's boundary terms reproduce the whole."""
    t = make_inputs(2, L, 4, 8, G, 16, states=states, seed=L + cut)
    y, sf, sb = native.native_hydra_scan_cpu(*args(t))

    def piece(sl, state_f0, state_b0):
        p = {k: (v[:, sl] if k in ("x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b") else v)
             for k, v in t.items()}
        p = {k: (v.contiguous() if v is not None else None) for k, v in p.items()}
        p["state_f0"], p["state_b0"] = state_f0, state_b0
        return native.native_hydra_scan_cpu(*args(p))

    left, right = slice(0, cut), slice(cut, L)
    # Backward states flow right→left, forward states left→right: the right piece's state_b does
    # not depend on its state_f0, so one pass for it, then the left piece, then the right again.
    _, _, sb_right = piece(right, None, t["state_b0"])
    y_left, sf_left, sb_left = piece(left, t["state_f0"], sb_right)
    y_right, sf_right, _ = piece(right, sf_left, t["state_b0"])

    H, G_ = t["x"].shape[2], t["C_f"].shape[2]

    def boundary(state, c_row):  # state [B,H,P,N] · C row [B,G,N] of the neighbouring piece
        return torch.einsum("bhpn,bhn->bhp", state, c_row.repeat_interleave(H // G_, dim=1))

    y_left = y_left.clone()
    y_right = y_right.clone()
    y_right[:, 0] += boundary(sf_left, t["C_f"][:, cut - 1])
    y_left[:, -1] += boundary(sb_right, t["C_b"][:, cut])
    y_joined = torch.cat([y_left, y_right], dim=1)
    scale = y.abs().max()
    assert ((y_joined - y).abs().max() / scale).item() <= 1e-5
    assert ((sf_right - sf).abs().max() / sf.abs().max()).item() <= 1e-5
    assert ((sb_left - sb).abs().max() / sb.abs().max()).item() <= 1e-5


def test_empty_batch_and_time(lib):
    t = make_inputs(0, 5, 4, 8, 1, 16, states=False, seed=0)
    y, sf, _ = native.native_hydra_scan_cpu(*args(t))
    assert y.shape == (0, 5, 4, 8) and sf.shape == (0, 4, 8, 16)
    t = make_inputs(2, 0, 4, 8, 1, 16, states=True, seed=0)
    y, sf, sb = native.native_hydra_scan_cpu(*args(t))
    assert y.shape == (2, 0, 4, 8)
    assert torch.equal(sf, t["state_f0"]) and torch.equal(sb, t["state_b0"])


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _bad(mutate):
    t = make_inputs(2, 10, 4, 8, 2, 16, states=True, seed=1)
    mutate(t)
    return t


@pytest.mark.parametrize("mutate,needle", [
    (lambda t: t.update(x=t["x"].transpose(0, 1).contiguous().transpose(0, 1)), "contiguous"),
    (lambda t: t.update(dt_f=t["dt_f"][:, :9].contiguous()), "dt_f must have shape"),
    (lambda t: t.update(C_b=t["C_b"].to(torch.float16)), "C_b must have x's dtype"),
    (lambda t: t.update(B_f=t["B_f"].to("meta")), "B_f must be on the CPU"),
    (lambda t: t.update(x=t["x"].double()), "x must be float32"),
    (lambda t: t.update(state_f0=t["state_f0"].double()), "state_f0 must have dtype torch.float32"),
    (lambda t: t.update(state_b0=t["state_b0"][:, :3].contiguous()), "state_b0 must have shape"),
    (lambda t: t.update(A=t["A"].to(torch.int32)), "A must have dtype torch.float32"),
    (lambda t: t.update(x=t["x"].numpy()), "x must be a torch.Tensor"),
    (lambda t: t.update(**{k: t[k].repeat(1, 1, 2, 1)[:, :, :3].contiguous()  # G=3, H=4
                           for k in ("B_f", "C_f", "B_b", "C_b")}), "divisible"),
])
def test_bad_inputs_raise_input_error(lib, mutate, needle):
    with pytest.raises(InputError, match=needle):
        native.native_hydra_scan_cpu(*args(_bad(mutate)))


def test_c_abi_validation_and_cuda_entry(lib):
    err = ctypes.create_string_buffer(256)
    bad = native._HmScanShape(1, 4, 6, 8, 4, 16)  # H=6 not divisible by G=4
    assert lib.hm_hydra_scan_validate(ctypes.byref(bad), 0, 0, err, 256) == 1
    assert b"divisible" in err.value
    ok = native._HmScanShape(2, 10, 4, 8, 2, 16)
    assert lib.hm_hydra_scan_validate(ctypes.byref(ok), 1, 0, err, 256) == 0
    assert lib.hm_hydra_scan_validate(ctypes.byref(ok), 1, 2, err, 256) == 1  # fp16 x, bf16 dt
    # The CUDA kernel's per-chunk fp32 states and decays, both directions: L = 10 is one chunk;
    # (2 directions * B 2 * H 4 * 1 chunk) * P 8 * N 16 * 4 = 8192 bytes of states, 16 decays padded
    # to 256 bytes.
    assert lib.hm_hydra_scan_workspace_size(ctypes.byref(ok), 0) == 8192 + 256
    assert lib.hm_hydra_scan_workspace_size(ctypes.byref(ok), 1) == 8192 + 256
    # The CUDA entry is always exported; shapes beyond the kernel's shared-memory plan (here N =
    # 1024) or a build without CUDA are refused before any device work: safe with or without a GPU.
    big = native._HmScanShape(1, 1, 1, 1, 1, 1024)
    buf = (ctypes.c_float * 1024)()
    p = ctypes.cast(buf, ctypes.c_void_p)
    code = lib.hm_hydra_scan_cuda(ctypes.byref(big), 0, 0, *([p] * 14), None, 0, None, err, 256)
    assert code == 2, err.value
    assert (b"dstate" in err.value) if lib.hm_has_cuda() else (b"without CUDA" in err.value)


def test_cuda_scan_plan_needs_no_gpu(lib, monkeypatch):
    # Planned on the host, so it answers in CPU-only builds too. Ego4D's Hydra shape: 16-bit x runs
    # 64-step tiles on tensor cores, fp32 32-step tiles with FMA (shared-memory budget); the
    # workspace holds fp32 per-chunk states and decays of both directions for one tile per chunk
    # (the most chunks, so it fits any tiles-per-chunk setting), each part padded to 256 bytes.
    def workspace(B, L, H, P, N, Q):
        chunks = -(-L // Q)
        pad = lambda n: -(-n // 256) * 256  # noqa: E731
        return pad(2 * B * H * chunks * P * N * 4) + pad(2 * B * H * chunks * 4)

    monkeypatch.delenv(native.TILES_PER_CHUNK_ENV, raising=False)
    ws16 = workspace(2, 1000, 12, 64, 64, 64)
    plan = native.cuda_scan_plan(2, 1000, 12, 64, 1, 64, torch.float16)
    assert plan == {"tile": 64, "chunk": 64, "tensor_cores": True, "workspace_bytes": ws16}
    assert ws16 == lib.hm_hydra_scan_workspace_size(ctypes.byref(native._HmScanShape(2, 1000, 12, 64, 1, 64)), 1)
    plan = native.cuda_scan_plan(1, 1000, 12, 64, 1, 64, torch.float32)
    assert plan == {"tile": 32, "chunk": 32, "tensor_cores": False,
                    "workspace_bytes": workspace(1, 1000, 12, 64, 64, 32)}
    assert not native.cuda_scan_plan(1, 10, 2, 8, 1, 24, torch.bfloat16)["tensor_cores"]  # P, N not multiples of 16
    assert native.cuda_scan_plan(1, 0, 2, 8, 1, 24, torch.float16)["workspace_bytes"] == 0
    # Longer state chunks: same tiles and workspace, chunk = 4 tiles.
    monkeypatch.setenv(native.TILES_PER_CHUNK_ENV, "4")
    assert native.cuda_scan_plan(2, 1000, 12, 64, 1, 64, torch.float16) == {
        "tile": 64, "chunk": 256, "tensor_cores": True, "workspace_bytes": ws16}
    monkeypatch.setenv(native.TILES_PER_CHUNK_ENV, "3")
    with pytest.raises(BackendUnavailableError, match="must be 1, 2 or 4, got '3'"):
        native.cuda_scan_plan(2, 1000, 12, 64, 1, 64, torch.float16)
    monkeypatch.delenv(native.TILES_PER_CHUNK_ENV)
    with pytest.raises(BackendUnavailableError, match="shared memory"):
        native.cuda_scan_plan(1, 10, 1, 200, 1, 200, torch.float32)
    with pytest.raises(InputError, match="divisible"):
        native.cuda_scan_plan(1, 10, 6, 4, 4, 8, torch.float32)
    with pytest.raises(InputError, match="dtype"):
        native.cuda_scan_plan(1, 10, 2, 4, 1, 8, torch.float64)


def _no_library(monkeypatch, tmp_path):
    """Make libhieramamba_plugins unfindable for one test (the loader caches the loaded file)."""
    monkeypatch.setattr(native_library, "_lib", None)
    monkeypatch.setattr(native_library, "_REPO_ROOT", tmp_path)
    monkeypatch.setattr(native_library, "_PACKAGE_DIR", tmp_path)
    monkeypatch.setenv(native.LIBRARY_ENV, str(tmp_path / "nowhere.so"))


def test_missing_library_error_names_paths_and_command(monkeypatch, tmp_path):
    _no_library(monkeypatch, tmp_path)
    assert native.load_native_library(required=False) is None
    with pytest.raises(BackendUnavailableError) as e:
        native.load_native_library(required=True)
    message = str(e.value)
    assert "nowhere.so" in message and "cmake -S . -B build" in message


def test_registers_as_the_ops_cpu_kernel(lib):
    """The op calls kernels as fn(x, ..., state_b0, chunk_size): the native kernel must fit."""
    op_module = importlib.import_module("hieramamba.ops.hydra_scan.op")

    t = make_inputs(2, 64, 4, 8, 2, 16, states=True, seed=9)
    expected = native.native_hydra_scan_cpu(*args(t))
    previous = getattr(op_module, "_KERNELS", {}).get("cpu")  # restore whatever was registered
    assert op_module.register_native_cpu_kernel(required=True)
    try:
        got = op_module.hydra_scan(*args(t))
    finally:
        if previous is not None:
            op_module.register_kernel("cpu", *previous)
        else:
            op_module.unregister_kernel("cpu")
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# C++ unit tests and the CUDA compile check
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# The kernel inside ONNX Runtime (the library is also an ORT custom-op library)
# ------------------------------------------------------------------------------------------------

_SCAN_DIMS = {"x": ["B", "L", "H", "P"], "dt_f": ["B", "L", "H"], "dt_b": ["B", "L", "H"], "A": ["H"],
              "dt_bias": ["H"], "B_f": ["B", "L", "G", "N"], "C_f": ["B", "L", "G", "N"],
              "B_b": ["B", "L", "G", "N"], "C_b": ["B", "L", "G", "N"], "state_f0": ["B", "H", "P", "N"],
              "state_b0": ["B", "H", "P", "N"]}


def _scan_node_model(act, dt, states: bool) -> bytes:
    """One ``hieramamba::HydraScan`` node with no function body, so ONNX Runtime can run it only
    with our kernel. Inputs are fp32 (numpy has no bf16) cast to the tested types in the graph."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    code = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
            torch.bfloat16: TensorProto.BFLOAT16}
    names = ORDER[:11 if states else 9]
    types = {n: code[act] for n in names}
    types.update({n: code[dt] for n in ("dt_f", "dt_b", "A", "dt_bias")})
    types.update({n: TensorProto.FLOAT for n in ("state_f0", "state_b0")})
    nodes = [helper.make_node("Cast", [n], [n + "_cast"], to=types[n]) for n in names]
    nodes.append(helper.make_node("HydraScan", [n + "_cast" for n in names], ["y_cast", "state_f", "state_b"],
                                  domain="hieramamba", chunk_size=64, has_initial_states=int(states),
                                  plugin_version="1", plugin_namespace="hieramamba"))
    nodes.append(helper.make_node("Cast", ["y_cast"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "hydra_scan_node",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, _SCAN_DIMS[n]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, _SCAN_DIMS["x"]),
         helper.make_tensor_value_info("state_f", TensorProto.FLOAT, _SCAN_DIMS["state_f0"]),
         helper.make_tensor_value_info("state_b", TensorProto.FLOAT, _SCAN_DIMS["state_b0"])])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid("hieramamba", 1)])
    return model.SerializeToString()


def _ort_scan(t, act, dt, threads=2):
    ort = pytest.importorskip("onnxruntime")
    from hieramamba.ort_options import ort_session_options

    states = t["state_f0"] is not None
    sess = ort.InferenceSession(_scan_node_model(act, dt, states),
                                ort_session_options(ort, threads, scan_kernel="native"),
                                providers=["CPUExecutionProvider"])
    feeds = {n: t[n].float().numpy() for n in ORDER[:11 if states else 9]}
    return sess.run(None, feeds)


@pytest.mark.parametrize("act,dt,L,G,states,tol", [
    (torch.float32, torch.float32, 1, 1, False, 1e-5),
    (torch.float32, torch.float32, 17, 2, True, 1e-5),
    (torch.float32, torch.float32, 300, 1, True, 1e-5),
    (torch.float32, torch.float32, 1000, 2, False, 1e-5),
    (torch.float16, torch.float32, 300, 2, True, 2e-3),
    (torch.float16, torch.float16, 300, 1, False, 2e-3),
    (torch.bfloat16, torch.float32, 300, 2, True, 1e-2),
    (torch.bfloat16, torch.bfloat16, 17, 1, False, 1e-2),
])
def test_ort_custom_op_matches_float64_oracle(lib, act, dt, L, G, states, tol):
    t = make_inputs(2, L, 4, 8, G, 16, states=states, seed=L + G, dtype=act, dt_dtype=dt)
    y, sf, sb = _ort_scan(t, act, dt)
    y_ref, sf_ref, sb_ref = oracle(*args(t))
    assert y.shape == (2, L, 4, 8) and sf.shape == sb.shape == (2, 4, 8, 16)
    assert rel_err(y, y_ref) <= tol
    assert rel_err(sf, sf_ref) <= 1e-5
    assert rel_err(sb, sb_ref) <= 1e-5


def test_ort_custom_op_threads_and_missing_kernel(lib):
    ort = pytest.importorskip("onnxruntime")
    from hieramamba.ort_options import ort_session_options

    t = make_inputs(3, 200, 4, 8, 2, 16, states=True, seed=4)
    one, many = _ort_scan(t, torch.float32, torch.float32, 1), _ort_scan(t, torch.float32, torch.float32, 3)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    # Without the kernel registered a body-less node cannot run: the results above are the kernel's.
    with pytest.raises(Exception, match="HydraScan"):
        ort.InferenceSession(_scan_node_model(torch.float32, torch.float32, True), ort_session_options(ort, 1),
                             providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("mutate,needle", [
    (lambda t: t.update(dt_f=t["dt_f"][:, :-1]), "dimension L differs"),
    (lambda t: t.update(**{k: t[k].repeat(1, 1, 2, 1)[:, :, :3] for k in ("B_f", "C_f", "B_b", "C_b")}),
     "divisible"),
    (lambda t: t.update(state_b0=t["state_b0"][:, :, :, :-1]), "dimension N differs"),
])
def test_ort_custom_op_bad_shapes_fail_with_the_reason(lib, mutate, needle):
    t = make_inputs(1, 20, 4, 8, 2, 16, states=True, seed=2)  # G=2: the repeat-and-cut gives G=3
    mutate(t)
    with pytest.raises(Exception, match=needle):
        _ort_scan(t, torch.float32, torch.float32)


def test_scan_kernel_choice_without_library(monkeypatch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from hieramamba.ort_options import ort_session_options, resolve_scan_kernel

    _no_library(monkeypatch, tmp_path)
    assert resolve_scan_kernel("auto") == "graph" and resolve_scan_kernel("graph") == "graph"
    with pytest.raises(BackendUnavailableError, match="cmake -S . -B build"):
        ort_session_options(ort, 1, scan_kernel="native")
    with pytest.raises(ValueError, match="scan_kernel"):
        resolve_scan_kernel("fast")


def test_ctest_unit_tests(lib):
    if not (BUILD / "CTestTestfile.cmake").is_file() or shutil.which("ctest") is None:
        pytest.skip(f"no CTest build tree at {BUILD} (library loaded from elsewhere) or ctest missing")
    # Make sure the test executables are current before running them.
    build = _run(["cmake", "--build", str(BUILD), "-j2"], 600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    result = _run(["ctest", "--test-dir", str(BUILD), "--output-on-failure"], 300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "hydra_scan_logic" in result.stdout


def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA kernel cannot be compiled on this machine")
    # Warnings are errors here (the CMake build only reports them), for Ampere and Hopper.
    cmd = [nvcc, "-std=c++17", "-O3", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           "-Xptxas", "-warn-spills", "-c", str(KERNEL_CU), "-o", str(tmp_path / "hydraScanKernel.o")]
    result = _run(cmd, 300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "hydraScanKernel.o").stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# CUDA kernel through the C ABI (runs only where a GPU is present)
# ------------------------------------------------------------------------------------------------


def test_cuda_wrapper_rejects_host_tensors(lib):
    if not lib.hm_has_cuda():
        with pytest.raises(BackendUnavailableError, match="without the CUDA kernel"):
            native.native_hydra_scan_cuda(*args(make_inputs(1, 4, 2, 4, 1, 8, states=False, seed=0)))
        return
    with pytest.raises(InputError, match="must be on x's CUDA device"):
        native.native_hydra_scan_cuda(*args(make_inputs(1, 4, 2, 4, 1, 8, states=False, seed=0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not measured on GPU here)")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("L,G,states", [(1, 1, False), (300, 2, True), (5000, 1, True)])
# (P, N): tensor cores for 16-bit x when both are multiples of 16, else FMA; (64, 64) is Ego4D/MAD's
# shape (64-step chunks on tensor cores, 32-step chunks in fp32).
@pytest.mark.parametrize("P,N", [(16, 32), (64, 64), (8, 24)])
def test_cuda_kernel_matches_float64_oracle(lib, dtype, tol, L, G, states, P, N):
    if not lib.hm_has_cuda():
        pytest.skip("library built without the CUDA kernel")
    t = make_inputs(2, L, 4, P, G, N, states=states, seed=L, dtype=dtype)
    want = oracle(*args(t))
    dev = {k: (None if v is None else v.cuda()) for k, v in t.items()}
    got = native.native_hydra_scan_cuda(*args(dev))
    torch.cuda.synchronize()
    for g, w, name in zip(got, want, ("y", "state_f", "state_b")):
        assert rel_err(g.cpu(), w) <= tol, f"{name}: {rel_err(g.cpu(), w):.2e} > {tol}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not measured on GPU here)")
@pytest.mark.parametrize("tiles", ["2", "4"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_cuda_kernel_longer_state_chunks_match_oracle(lib, monkeypatch, tiles, dtype, tol):
    # Several tiles per state chunk (the tuning knob): the same results up to rounding.
    if not lib.hm_has_cuda():
        pytest.skip("library built without the CUDA kernel")
    monkeypatch.setenv(native.TILES_PER_CHUNK_ENV, tiles)
    t = make_inputs(2, 1000, 4, 64, 1, 64, states=True, seed=3, dtype=dtype)
    want = oracle(*args(t))
    got = native.native_hydra_scan_cuda(*args({k: (None if v is None else v.cuda()) for k, v in t.items()}))
    torch.cuda.synchronize()
    for g, w, name in zip(got, want, ("y", "state_f", "state_b")):
        assert rel_err(g.cpu(), w) <= tol, f"{name}: {rel_err(g.cpu(), w):.2e} > {tol}"
