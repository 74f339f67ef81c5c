"""``hieramamba export``, ``export-bundle``, ``check-onnx``, ``build-engine`` and ``build-engines``.

Importing this module imports neither torch nor onnx; each command imports what it needs."""

from __future__ import annotations

import time
from pathlib import Path

from hieramamba.errors import InputError

from .common import add_model_source, add_scan_kernel, add_threads, load_model_from_args, positive_int


def _default_text_len(opt) -> int:
    return int(opt.get("eval", {}).get("max_text_len", 24))


def _export_outputs(args) -> list:
    """(path, dtype, portable) of every file ``hieramamba export`` writes."""
    outs = []
    for dtype in args.dtype:
        for portable in ([False, True] if args.both else [args.portable]):
            out = Path(args.out)
            if len(args.dtype) > 1 or args.both:
                out = out.with_name(f"{out.stem}.{dtype}{'.portable' if portable else ''}{out.suffix}")
            outs.append((out, dtype, portable))
    return outs


def _check_before_export(args) -> None:
    """What would fail only after minutes of export, checked first."""
    from hieramamba.export.onnx_export import check_opset

    try:
        check_opset(args.opset)
    except Exception as exc:
        raise InputError(f"--opset: {exc}") from None


def cmd_export(args) -> int:
    from hieramamba.artifacts import check_output_location
    from hieramamba.export.api import export_to_file

    _check_before_export(args)
    if not str(args.out).endswith(".onnx"):
        raise InputError(f"--out must end in .onnx, got {args.out}")
    outs = _export_outputs(args)
    for out, _, _ in outs:
        check_output_location(out, "--out")
    model, opt, source = load_model_from_args(args)
    for out, dtype, portable in outs:
        t0 = time.perf_counter()
        path, man = export_to_file(model, opt, out, dtype=dtype, portable=portable, opset=args.opset, source=source)
        size = path.stat().st_size / 2 ** 20
        print(f"wrote {path} ({size:.1f} MiB, {man['hydra_scan']['custom_nodes']} HydraScan nodes,"
              f" {dtype}, opset {args.opset}) in {time.perf_counter() - t0:.1f} s; manifest {path}.json")
    return 0


def cmd_export_bundle(args) -> int:
    from hieramamba.artifacts import check_output_location
    from hieramamba.export.stages import export_bundle

    _check_before_export(args)
    check_output_location(args.out, "--out", folder=True)
    model, opt, _ = load_model_from_args(args)
    t0 = time.perf_counter()
    out = export_bundle(model, opt, args.out, dtype=args.dtype, opset=args.opset,
                        log=lambda line: print(line, flush=True))
    size = sum(f.stat().st_size for f in Path(out).iterdir()) / 2 ** 20
    print(f"wrote bundle {out} ({args.dtype}, {size:.1f} MiB) in {time.perf_counter() - t0:.1f} s; "
          f"run it with: hieramamba ground --bundle {out} --video V.npy --query Q.npy --fps FPS")
    return 0


def cmd_check_onnx(args) -> int:
    import torch

    from hieramamba.errors import ExportError

    from hieramamba.export.check import format_case, ort_session, run_case
    from hieramamba.export.manifest import load_manifest
    from hieramamba.ort_options import resolve_scan_kernel

    man = load_manifest(args.onnx)
    model, opt, _ = load_model_from_args(args)
    if man.get("mask_semantics") != model.mask_semantics:
        raise ExportError(f"{args.onnx} was exported with mask semantics {man.get('mask_semantics')!r}, "
                          f"the eager model uses {model.mask_semantics!r}")
    kernel = resolve_scan_kernel(args.scan_kernel)
    sess = ort_session(args.onnx, args.threads, scan_kernel=kernel)
    print(f"HydraScan nodes run by: "
          f"{'the C++ kernel (libhieramamba_plugins)' if kernel == 'native' else 'their ONNX function body'}")
    dtype = torch.float16 if man["dtype"] == "float16" else torch.float32
    tol = args.tol if args.tol is not None else (1e-2 if dtype == torch.float16 else 1e-4)
    text_len = args.text_len or _default_text_len(opt)
    worst, fails = 0.0, 0
    for T in args.lengths:
        for nq in args.queries:
            r = run_case(sess, model, T, nq, text_len, dtype=dtype, seed=T * 31 + nq,
                         valid=max(1, T - T // 7))
            print(format_case(r))
            worst = max(worst, r.worst())
            if r.worst() > tol or r.mask_mismatches():
                fails += 1
    print(f"worst max rel error on logits/offsets: {worst:.3e} (tolerance {tol:g}); "
          f"{fails} failing case(s)")
    return 1 if fails else 0


def cmd_build_engine(args) -> int:
    from hieramamba.export.trt_build import build_engine, profile_from_args

    profile = profile_from_args(args.lengths, args.queries, args.text_len)
    engine = args.out or str(Path(args.onnx).with_suffix(".engine"))
    man = build_engine(args.onnx, engine, profile, plugin_library=args.plugin,
                       timing_cache=args.timing_cache, workspace_gib=args.workspace_gib)
    print(f"wrote {engine} (TensorRT {man['tensorrt_version']}, GPU {man['gpu']}); manifest {engine}.json")
    return 0


def cmd_build_engines(args) -> int:
    from hieramamba.artifacts import BundleManifest, EngineLimits, check_output_folder
    from hieramamba.export.trt_build import build_bundle_engines

    if args.out:
        check_output_folder(args.out, "--out")

    plan = BundleManifest.read(args.bundle).plan
    limits = EngineLimits(chunk=args.chunk, max_batch=args.max_batch,
                          max_text_len=args.max_text_len or plan.max_text_len,
                          max_clips=args.max_clips, attn_rows=args.attn_rows)
    out = build_bundle_engines(args.bundle, limits, args.out, plugin_library=args.plugin,
                               workspace_gib=args.workspace_gib, progress=not args.no_progress)
    print(f"wrote TensorRT engines for {limits.describe()} to {out}; run them with: hieramamba ground "
          f"--bundle {args.bundle} --backend tensorrt" + (f" --engines {out}" if args.out else ""))
    return 0


def register(sub) -> None:
    """Add the export subcommands to the ``hieramamba`` argparse subparsers."""
    from hieramamba.artifacts import DEFAULT_ENGINE_CHUNK

    p = sub.add_parser("export", help="export a model to ONNX (HydraScan custom node + local function)")
    add_model_source(p)
    p.add_argument("--out", required=True, help="output .onnx path (a manifest .onnx.json is written beside it)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float16"])
    p.add_argument("--portable", action="store_true", help="inline HydraScan (standard ops only)")
    p.add_argument("--both", action="store_true", help="write the custom-node and the portable graph")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-bundle", help="export the chunked runtime's stage graphs (a bundle folder)")
    add_model_source(p)
    p.add_argument("--out", required=True, help="bundle folder to create (must not exist)")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"],
                   help="float16 (GPU, TensorRT), float32, or bfloat16: float32 graphs whose large matrix "
                        "products take bf16 operands (CPUs with AVX512-BF16; ONNX Runtime CPU only)")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export_bundle)

    p = sub.add_parser("check-onnx", help="ONNX Runtime (CPU) vs eager PyTorch, max abs/rel error per output")
    p.add_argument("onnx", help="exported .onnx (its manifest must be beside it)")
    add_model_source(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 127, 2304])
    p.add_argument("--queries", type=int, nargs="+", default=[1, 8])
    p.add_argument("--text-len", type=int, help="query token length (default eval.max_text_len)")
    p.add_argument("--tol", type=float, help="max rel error allowed (default 1e-4 fp32, 1e-2 fp16)")
    add_threads(p)
    add_scan_kernel(p)  # graph: checks the file as written; native: the C++ kernel on this model
    p.set_defaults(func=cmd_check_onnx)

    p = sub.add_parser("build-engine", help="build a TensorRT engine (TensorRT 10 Python API)")
    p.add_argument("onnx", help="exported .onnx (its manifest must be beside it)")
    p.add_argument("--out", help="engine path (default: <onnx>.engine)")
    p.add_argument("--plugin", help="HydraScan plugin library (default build/libhieramamba_trt_plugin.so)")
    p.add_argument("--lengths", default="128:2304:9216", help="video length MIN:OPT:MAX")
    p.add_argument("--queries", default="1:8:32", help="query batch MIN:OPT:MAX")
    p.add_argument("--text-len", default="24", help="text length MIN:OPT:MAX or N")
    p.add_argument("--timing-cache", help="timing cache file (read if present, then updated)")
    p.add_argument("--workspace-gib", type=float, default=8.0)
    p.set_defaults(func=cmd_build_engine)

    p = sub.add_parser("build-engines", help="build one TensorRT engine per stage of a runtime bundle")
    p.add_argument("bundle", help="runtime bundle folder (hieramamba export-bundle)")
    p.add_argument("--out", help="engines folder (default <bundle>/trt; replaced atomically)")
    p.add_argument("--chunk", type=positive_int, default=DEFAULT_ENGINE_CHUNK,
                   help=f"largest runtime chunk (level tokens, default {DEFAULT_ENGINE_CHUNK})")
    p.add_argument("--max-batch", type=positive_int, default=16, help="most queries per backbone batch")
    p.add_argument("--max-text-len", type=positive_int, help="most query tokens (default eval.max_text_len)")
    p.add_argument("--max-clips", type=positive_int, default=65536, help="longest video (features)")
    p.add_argument("--attn-rows", type=positive_int, help="global-attention rows per block (default: the runtime's)")
    p.add_argument("--plugin", help="HydraScan plugin library (default build/libhieramamba_trt_plugin.so)")
    p.add_argument("--workspace-gib", type=float, default=8.0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_build_engines)
