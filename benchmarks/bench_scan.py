"""HydraScan implementations vs sequence length, with achieved bandwidth vs a measured copy.

Not a CI test. Paths (each skipped with its reason when it cannot run here):

* ``reference``  ``hydra_scan_reference`` (pure PyTorch, chunked SSD) on the device;
* ``native``     the C++ CPU kernel (``--device cpu``) or the CUDA kernel (``--device cuda``) of
                 ``plugins/`` through ``hieramamba.ops.hydra_scan.native`` (library built by CMake);
                 ``--tiles-per-chunk 1,2,4`` adds ``native_t1`` ... (the CUDA kernel's state chunk
                 of 1, 2, 4 tiles);
* ``triton``     mamba-ssm's ``mamba_chunk_scan_combined`` run the way Hydra runs it: forward and
                 time-flipped backward problems stacked on the batch axis, one scan with
                 ``dt_softplus``, the backward half flipped back, both shifted one step and added
                 (CUDA + mamba-ssm + triton only);
* ``ort_graph``  the exported ``hieramamba::HydraScan`` node alone in ONNX Runtime (CPU), run by its
                 ONNX function body (what the export writes; fp32/fp16);
* ``ort_native`` the same node with ``libhieramamba_plugins`` registered as ORT custom-op library:
                 the C++ kernel inside ONNX Runtime (CPU; fp32/fp16).

Every path's ``y`` is compared with the reference (max relative error), so a fast wrong kernel
shows. Bandwidth: the scan's minimal traffic is one read of ``x, dt_f, dt_b, B_f, C_f, B_b, C_b``
and one write of ``y`` (states are negligible); "GB/s" is that over the time, "% copy" divides it
by the bandwidth of a device-to-device copy of as many bytes measured in the same run.
Issue 5's targets (GPU): ``native`` ≥ 70 % of copy, ≥ 2× ``triton``.

    python benchmarks/bench_scan.py --device cuda --dtype float16 --lengths 1024,4096,16384,65536
    python benchmarks/bench_scan.py --device cpu --lengths 1024,4096 --repeats 3    # smoke run here
    python benchmarks/bench_scan.py --device cpu --dtype float32 --paths reference,native,ort_graph,ort_native
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import scan_oracle  # noqa: E402  (the tests' inputs and float64 oracle)

from hieramamba.device import resolve_device
from hieramamba.errors import InputError
from hieramamba.ops.hydra_scan import hydra_scan_reference

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_inputs(batch, length, heads, headdim, groups, dstate, dtype, device, seed=0):
    """The tests' HydraScan inputs (tests/scan_oracle.py), without initial states."""
    return scan_oracle.make_inputs(batch, length, heads, headdim, groups, dstate, seed=seed, dtype=dtype,
                                   device=device)


def minimal_bytes(t) -> int:
    return sum(t[k].numel() * t[k].element_size() for k in ("x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b")) \
        + t["x"].numel() * t["x"].element_size()  # y written


def args_of(t):
    return (t["x"], t["dt_f"], t["dt_b"], t["A"], t["dt_bias"], t["B_f"], t["C_f"], t["B_b"], t["C_b"])


def run_reference(t, chunk):
    return hydra_scan_reference(*args_of(t), None, None, chunk_size=chunk)[0]


def native_runner(device):
    from hieramamba.ops.hydra_scan import native

    if device == "cpu":
        fn = native.native_hydra_scan_cpu
    else:
        lib = native.load_native_library(required=True)
        if not lib.hm_has_cuda():
            raise RuntimeError("the plugin library was built without the CUDA kernel")
        fn = native.native_hydra_scan_cuda
    native.load_native_library(required=True)
    return lambda t, chunk: fn(*args_of(t), None, None, chunk_size=chunk)[0]


def native_tiles_runner(device, tiles):
    """The CUDA kernel with ``tiles`` tiles per state chunk (``$HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK``,
    read by the kernel's planner on every call)."""
    import os

    from hieramamba.ops.hydra_scan.native import TILES_PER_CHUNK_ENV

    if device == "cpu":
        raise RuntimeError("tiles per chunk are a setting of the CUDA kernel")
    run = native_runner(device)

    def with_tiles(t, chunk):
        before = os.environ.get(TILES_PER_CHUNK_ENV)
        os.environ[TILES_PER_CHUNK_ENV] = str(tiles)
        try:
            return run(t, chunk)
        finally:
            if before is None:
                del os.environ[TILES_PER_CHUNK_ENV]
            else:
                os.environ[TILES_PER_CHUNK_ENV] = before
    return with_tiles


def triton_runner(device):
    if device == "cpu":
        raise RuntimeError("mamba-ssm's Triton kernels need a CUDA device")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    def run(t, chunk):
        b = t["x"].shape[0]
        stack = lambda f, bw: torch.cat([f, bw.flip(1)], 0)  # noqa: E731
        y = mamba_chunk_scan_combined(stack(t["x"], t["x"]), stack(t["dt_f"], t["dt_b"]), t["A"],
                                      stack(t["B_f"], t["B_b"]), stack(t["C_f"], t["C_b"]), chunk,
                                      D=None, z=None, dt_bias=t["dt_bias"], dt_softplus=True)
        y_f, y_b = y[:b], y[b:].flip(1)
        return F.pad(y_f[:, :-1], (0, 0, 0, 0, 1, 0)) + F.pad(y_b[:, 1:], (0, 0, 0, 0, 0, 1))

    return run


def ort_runner(scan_kernel):
    """The HydraScan node of the export (with its function body) in an ONNX Runtime session."""
    def make(device):
        if device != "cpu":
            raise RuntimeError("the ONNX Runtime paths run on the CPU provider")
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from hieramamba.export import scan_node
        from hieramamba.export.onnx_export import DEFAULT_OPSET
        from hieramamba.ort_options import ort_session_options

        onnx_types = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}
        sessions = {}

        def session(t, chunk):
            x = t["x"]
            if x.dtype not in onnx_types:
                raise RuntimeError(f"numpy has no {x.dtype}: ONNX Runtime paths run fp32/fp16")
            bsz, L, H, P = x.shape
            G, N = t["B_f"].shape[2:]
            sig = scan_node.ScanSignature(x.dtype, t["dt_f"].dtype, t["A"].dtype, t["dt_bias"].dtype,
                                          H, P, G, N, chunk, False)
            names = scan_node.INPUT_NAMES[:9]
            dims = {"x": ["B", "L", H, P], "dt_f": ["B", "L", H], "dt_b": ["B", "L", H], "A": [H],
                    "dt_bias": [H], **{k: ["B", "L", G, N] for k in ("B_f", "C_f", "B_b", "C_b")}}
            node = helper.make_node(scan_node.OP_TYPE, list(names), list(scan_node.OUTPUT_NAMES),
                                    domain=scan_node.DOMAIN, chunk_size=chunk, has_initial_states=0,
                                    plugin_version=scan_node.PLUGIN_VERSION,
                                    plugin_namespace=scan_node.PLUGIN_NAMESPACE)
            graph = helper.make_graph(
                [node], "hydra_scan",
                [helper.make_tensor_value_info(n, onnx_types[t[n].dtype], dims[n]) for n in names],
                [helper.make_tensor_value_info("y", onnx_types[x.dtype], ["B", "L", H, P]),
                 helper.make_tensor_value_info("state_f", TensorProto.FLOAT, ["B", H, P, N]),
                 helper.make_tensor_value_info("state_b", TensorProto.FLOAT, ["B", H, P, N])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
            scan_node.attach_function(model, scan_node.build_function(sig, DEFAULT_OPSET))
            so = ort_session_options(ort, torch.get_num_threads(), scan_kernel=scan_kernel)
            return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

        def run(t, chunk):
            key = (t["x"].dtype, tuple(t["x"].shape[2:]), tuple(t["B_f"].shape[2:]), chunk)
            if key not in sessions:
                sessions[key] = session(t, chunk)
            feeds = {n: t[n].numpy() for n in scan_node.INPUT_NAMES[:9]}
            return torch.from_numpy(sessions[key].run(["y"], feeds)[0])

        return run

    return make


def timed(fn, device, warmup, repeats) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def copy_bandwidth(nbytes, device, warmup, repeats) -> float:
    """GB/s of a device-to-device copy of ``nbytes`` (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = statistics.median(timed(lambda: dst.copy_(src), device, warmup, repeats))
    return 2 * nbytes / t / 1e9


def rel_err(got, want) -> float:
    want = want.double()
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    ap.add_argument("--lengths", default="1024,4096,16384,65536")
    ap.add_argument("--batch", type=int, default=1)
    # Ego4D level-0 Hydra: 12 heads × 64, d_state 64, one group (MAD: 16 heads).
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--dstate", type=int, default=64)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--paths", default="reference,native,triton")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--tiles-per-chunk", default="",
                    help="CUDA kernel: also time it with these tiles per state chunk, e.g. 1,2,4 "
                         "(paths native_t1, native_t2, ...)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        device, dtype = str(resolve_device(a.device)), DTYPES[a.dtype]
    except InputError as exc:
        ap.error(str(exc))
    runners, rows = {}, []
    for name in a.paths.split(","):
        try:
            runners[name] = {"reference": lambda d: run_reference, "native": native_runner,
                             "triton": triton_runner, "ort_graph": ort_runner("graph"),
                             "ort_native": ort_runner("native")}[name](device)
        except Exception as exc:  # reported, never dropped
            print(f"{name}: skipped ({type(exc).__name__}: {exc})")
    for tiles in (int(x) for x in a.tiles_per_chunk.split(",") if x):
        try:
            runners[f"native_t{tiles}"] = native_tiles_runner(device, tiles)
        except Exception as exc:
            print(f"native_t{tiles}: skipped ({type(exc).__name__}: {exc})")
    env = f"torch {torch.__version__}, device {device}"
    if device.startswith("cuda"):
        env += f" ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"
    print(f"{env}; dtype {a.dtype}; B={a.batch} H={a.heads} P={a.headdim} N={a.dstate} G={a.groups} "
          f"chunk={a.chunk}; median of {a.repeats} after {a.warmup} warm-up")
    print(f"{'L':>6s} {'path':10s} {'ms':>9s} {'GB/s':>8s} {'% copy':>7s} {'× triton':>8s} {'rel err':>9s}")
    for L in (int(x) for x in a.lengths.split(",")):
        if "native" in runners and device.startswith("cuda"):
            from hieramamba.ops.hydra_scan.native import cuda_scan_plan

            plan = cuda_scan_plan(a.batch, L, a.heads, a.headdim, a.groups, a.dstate, dtype)
            print(f"{L:>6d} native plan: {plan['tile']}-step tiles, {plan['chunk']}-step state chunks, "
                  f"{'tensor cores' if plan['tensor_cores'] else 'fp32 FMA'}, "
                  f"workspace {plan['workspace_bytes'] / 2**20:.1f} MiB")
        t = make_inputs(a.batch, L, a.heads, a.headdim, a.groups, a.dstate, dtype, device)
        nbytes = minimal_bytes(t)
        copy_gbs = copy_bandwidth(nbytes, device, a.warmup, a.repeats)
        want = run_reference(t, a.chunk)
        times = {}
        for name, fn in runners.items():
            try:
                got = fn(t, a.chunk)
                err = rel_err(got, want)
                times[name] = statistics.median(timed(lambda: fn(t, a.chunk), device, a.warmup, a.repeats))
            except Exception as exc:
                print(f"{L:>6d} {name:10s} failed: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            gbs = nbytes / times[name] / 1e9
            rows.append({"L": L, "path": name, "seconds": times[name], "gb_s": gbs, "copy_gb_s": copy_gbs,
                         "rel_err_vs_reference": err})
        for row in (r for r in rows if r["L"] == L):
            vs = times.get("triton")
            ratio = f"{vs / row['seconds']:8.2f}" if vs else f"{'–':>8s}"
            print(f"{L:>6d} {row['path']:10s} {row['seconds'] * 1e3:9.3f} {row['gb_s']:8.1f} "
                  f"{100 * row['gb_s'] / copy_gbs:6.1f}% {ratio} {row['rel_err_vs_reference']:9.2e}")
        print(f"{L:>6d} {'copy':10s} {'':>9s} {copy_gbs:8.1f}   ({device} memory copy of {nbytes / 2**20:.1f} MiB)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"environment": env, "settings": vars(a), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
