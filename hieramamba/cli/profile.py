"""``hieramamba bench`` and ``hieramamba profile`` (argument parsing; the work is in
``hieramamba.profiling``: bench.py, capture.py, nsys.py, report.py)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from hieramamba.errors import InputError

from .common import add_device, add_mask_semantics, add_threads, positive_int


def _device(args) -> str:
    from hieramamba.device import resolve_device

    return str(resolve_device(args.device))


def _ints(text: str) -> tuple:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise InputError(f"expected positive integers, got {text!r}")
    return vals


_SKIP = {"func", "cmd", "out", "parse", "print_commands", "report_only"}


def _argv(args) -> list:
    """The parsed options back as a command line (for the report's reproduce line)."""
    out = []
    for key, value in sorted(vars(args).items()):
        if key in _SKIP or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def cmd_bench(args) -> int:
    from hieramamba.profiling.bench import DEFAULT_PATHS, BenchSettings, run_bench, write_outputs
    from hieramamba.profiling.report import load_report, markdown_report

    if args.report_only:
        report = load_report(args.report_only)
        files = write_outputs(report, args.out or Path(args.report_only).parent, plots=not args.no_plots)
        print(markdown_report(report))
        print(f"wrote {', '.join(files.values())}", file=sys.stderr)
        return 0
    from hieramamba.artifacts import check_output_folder

    check_output_folder(args.out, "--out")
    paths = tuple(p.strip() for p in args.paths.split(",")) if args.paths else DEFAULT_PATHS
    settings = BenchSettings(config=args.config, experiment=args.experiment, clips=_ints(args.clips),
                             queries=_ints(args.queries), tokens=args.tokens, paths=paths,
                             warmup=args.warmup, repeats=args.repeats, device=_device(args),
                             threads=args.threads, seed=args.seed, isolate_memory=not args.no_memory,
                             workdir=args.workdir, mask_semantics=args.mask_semantics,
                             export=not args.no_export)
    report = run_bench(settings, log=lambda m: print(m, file=sys.stderr, flush=True))
    report["command"] = "hieramamba bench " + shlex.join(_argv(args) + ["--out", str(args.out)])
    files = write_outputs(report, args.out, plots=not args.no_plots)
    print(markdown_report(report))
    print(f"wrote {', '.join(files.values())}", file=sys.stderr)
    return 0


def cmd_profile(args) -> int:
    from hieramamba.profiling.nsys import format_summary, parse_file, profile_command, stats_command, summarize_ranges

    if args.parse:
        summary = summarize_ranges(parse_file(args.parse))
        print(format_summary(summary, f"NVTX ranges from {args.parse}"))
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2))
        return 0
    if args.print_commands:
        stem = f"hm_{args.config}_{args.clips}x{args.queries}"
        wl = [a for a in _argv(args) if a not in ("--mode", args.mode)]
        print(profile_command(stem, wl + ["--mode", "nvtx"]))
        print(stats_command(stem))
        print(f"hieramamba profile --parse {stem}_nvtx_sum.csv")
        return 0
    from hieramamba.artifacts import check_output_location
    from hieramamba.profiling.capture import ProfileSettings, run_profile

    if args.out:
        check_output_location(args.out, "--out")

    ps = ProfileSettings(config=args.config, experiment=args.experiment, clips=args.clips,
                         queries=args.queries, tokens=args.tokens, dtype=args.dtype, device=_device(args),
                         warmup=args.warmup, repeats=args.repeats, seed=args.seed, mode=args.mode,
                         threads=args.threads)
    result = run_profile(ps)
    result["command"] = "hieramamba profile " + shlex.join(_argv(args))
    print(f"{args.config} {args.clips} clips × {args.queries} queries, {args.dtype} on {args.device}: "
          f"median {result['latency_s']['median']:.3f} s over {args.repeats} run(s); ranges: {result['backend']}; "
          f"capture range: {result['capture_range']}")
    if "ranges" in result:
        print(format_summary(result["ranges"], "Per-range totals (recorded by the harness)"))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def _workload_args(p, default_clips="256"):
    p.add_argument("--config", default="tiny", help="packaged name (ego4d, tacos, mad, madv2, tiny) or YAML path")
    p.add_argument("--experiment", help="experiment folder (opt.yaml + models/) instead of random weights")
    p.add_argument("--tokens", type=positive_int, help="tokens per query (default min(20, eval.max_text_len))")
    add_device(p)
    add_threads(p)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_mask_semantics(p)


def register(sub) -> None:
    from hieramamba.profiling.bench import DEFAULT_PATHS

    p = sub.add_parser("bench", help="latency/throughput/memory of every execution path (JSON, Markdown, PNG)")
    _workload_args(p)
    p.add_argument("--clips", default="256", help="video lengths, comma-separated (default 256)")
    p.add_argument("--queries", default="1", help="query counts, comma-separated (default 1)")
    p.add_argument("--paths", help="comma-separated subset of: " + ", ".join(DEFAULT_PATHS))
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak-memory runs")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-export", action="store_true",
                   help="ONNX paths use files already in --workdir (model_custom.onnx, model_portable.onnx); "
                        "skip them instead of exporting (export can take many minutes on CPU)")
    p.add_argument("--workdir", help="keep exported ONNX files here (default: a temporary folder)")
    p.add_argument("--out", default="bench-out", help="folder for bench.json, bench.md and the plots")
    p.add_argument("--report-only", metavar="JSON", help="only render a recorded bench.json")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="NVTX-instrumented workload for Nsight Systems, or per-range timings")
    _workload_args(p)
    p.add_argument("--clips", type=positive_int, default=256)
    p.add_argument("--queries", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--mode", default="record", choices=["record", "nvtx"],
                   help="record: per-range timings here (no Nsight); nvtx: ranges for nsys")
    p.add_argument("--print-commands", action="store_true", help="print the nsys profile/stats commands")
    p.add_argument("--parse", metavar="CSV", help="summarize an `nsys stats --report nvtx_sum --format csv` file")
    p.add_argument("--out", help="write the result as JSON here")
    p.set_defaults(func=cmd_profile)
