"""The full ONNX acceptance matrix (issue 4): ONNX Runtime (CPU) vs eager PyTorch.

For each config (the four official ones with random weights, and the golden experiment folders
when present): export once (fp32 and fp16, custom-node graph; the portable graph is the same
export with the HydraScan function inlined), then run every graph at every length and query
batch. Prints one line per case and writes JSON lines (``--out``) as it goes, so a partial run
still reports. Also times ONNX Runtime vs eager (warm, median of ``--repeats``) per case; with
the default single repeat, eager runs once per input set (shared by both graphs and dtypes), so
its time is that first, cold run.

    python benchmarks/check_onnx_matrix.py                       # everything (slow: hours on 2 cores)
    python benchmarks/check_onnx_matrix.py --configs ego4d --dtypes float32 --lengths 1 2304
    python benchmarks/check_onnx_matrix.py --summarize results.jsonl [more.jsonl]   # Markdown table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOL = {"float32": 1e-4, "float16": 1e-2}


def _models(names, golden_root):
    import torch

    from hieramamba.checkpoint import load_experiment
    from hieramamba.config import load_config
    from hieramamba.model import build_model

    for name in names:
        if name.startswith("golden:"):
            case = name.split(":", 1)[1]
            folder = Path(golden_root) / case / "experiment"
            if not folder.is_dir():
                print(f"skip {name}: {folder} not found", flush=True)
                continue
            model, opt = load_experiment(folder)
        else:
            torch.manual_seed(0)
            opt = load_config(name)
            model = build_model(opt).eval()
        yield name, model, opt


def summarize(paths) -> str:
    """One Markdown row per (config, dtype, graph): cases, worst error, ORT/eager time ratios."""
    rows = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            key = (r["config"], r["dtype"], r.get("graph", "-"))
            rows.setdefault(key, []).append(r)
    out = ["| config | dtype | graph | cases ok | worst max rel (logits/offsets) | export s | ONNX MiB "
           "| ORT/eager time, T=2304 q=1 | T=5000 q=8 |", "|---|---|---|---|---|---|---|---|---|"]
    for (cfg, dtype, graph), rs in sorted(rows.items()):
        if "export_error" in rs[0]:
            out.append(f"| {cfg} | {dtype} | – | export failed | | | | | |")
            continue

        def ratio(T, q):
            m = [r for r in rs if r["T"] == T and r["queries"] == q]
            return f"{m[0]['ort_ms'] / m[0]['eager_ms']:.2f}" if m else "–"

        ok = sum(r["ok"] for r in rs)
        worst = max(r["max_rel_logits_offsets"] for r in rs)
        out.append(f"| {cfg} | {dtype} | {graph} | {ok}/{len(rs)} | {worst:.1e} | {rs[0]['export_s']:.0f} | "
                   f"{rs[0]['onnx_mib']:.0f} | {ratio(2304, 1)} | {ratio(5000, 8)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--summarize":
        print(summarize(sys.argv[2:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+",
                    default=["golden:ego4d", "golden:tacos", "ego4d", "tacos", "mad", "madv2"])
    ap.add_argument("--golden", default=str(Path(__file__).resolve().parents[2] / "shared" / "golden"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 127, 2304, 5000])
    ap.add_argument("--queries", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--graphs", nargs="+", default=["custom", "portable"])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per case after one warm-up")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="where the .onnx files go (default: temp dir)")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args(argv)

    import onnx
    import torch

    from hieramamba.export.api import export_to_file
    from hieramamba.export.check import GroundingGraph, ort_session, run_case
    from hieramamba.export.onnx_export import inline_scan_function, save_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="onnx_matrix_"))
    work.mkdir(parents=True, exist_ok=True)
    out = open(args.out, "a") if args.out else None
    failures = 0
    for name, model, opt in _models(args.configs, args.golden):
        text_len = int(opt["eval"].get("max_text_len", 24))
        eager = GroundingGraph(model).eval()
        eager_cache = {}  # eager outputs per input set, shared by both graphs and dtypes
        for dtype in args.dtypes:
            t0 = time.perf_counter()
            try:
                path, man = export_to_file(model, opt, work / f"{name.replace(':', '_')}.{dtype}.onnx",
                                           dtype=dtype)
            except Exception as exc:  # reported as a failing case; the other configs still run
                failures += 1
                print(f"== {name} {dtype}: EXPORT FAILED: {str(exc)[:300]}", flush=True)
                if out:
                    out.write(json.dumps({"config": name, "dtype": dtype, "ok": False,
                                          "export_error": str(exc)[:2000]}) + "\n")
                continue
            export_s = time.perf_counter() - t0
            size_mib = path.stat().st_size / 2 ** 20
            print(f"== {name} {dtype}: export {export_s:.1f} s, {size_mib:.1f} MiB", flush=True)
            graphs = {}
            if "custom" in args.graphs:
                graphs["custom"] = path
            if "portable" in args.graphs:
                p = work / f"{path.stem}.portable.onnx"
                save_model(inline_scan_function(onnx.load(str(path))), p)
                graphs["portable"] = p
            tdt = torch.float16 if dtype == "float16" else torch.float32
            for gname, gpath in graphs.items():
                sess = ort_session(gpath, args.threads)
                for T in args.lengths:
                    for nq in args.queries:
                        kw = dict(dtype=tdt, seed=T * 31 + nq, valid=max(1, T - T // 7),
                                  eager_graph=eager, eager_cache=eager_cache)
                        r = run_case(sess, model, T, nq, text_len, **kw)
                        ort_t, eager_t = [r.ort_seconds], [r.eager_seconds]
                        for _ in range(args.repeats - 1 if args.repeats > 1 else 0):
                            r2 = run_case(sess, model, T, nq, text_len, **{**kw, "eager_cache": None})
                            ort_t.append(r2.ort_seconds)
                            eager_t.append(r2.eager_seconds)
                        if args.repeats > 1:  # drop the warm-up
                            ort_t, eager_t = ort_t[1:], eager_t[1:]
                        worst = r.worst()
                        ok = worst <= TOL[dtype] and r.mask_mismatches() == 0
                        failures += not ok
                        rec = {"config": name, "dtype": dtype, "graph": gname, "T": T, "queries": nq,
                               "text_len": text_len, "max_rel_logits_offsets": worst,
                               "mask_mismatches": r.mask_mismatches(), "ok": ok,
                               "ort_ms": 1e3 * statistics.median(ort_t),
                               "eager_ms": 1e3 * statistics.median(eager_t),
                               "export_s": export_s, "onnx_mib": size_mib,
                               "per_output": {e.name: [e.max_abs, e.max_rel] for e in r.errors
                                              if not e.name.startswith("masks")}}
                        print(f"{name:13s} {dtype:8s} {gname:8s} T={T:5d} q={nq}: max rel {worst:.2e} "
                              f"{'ok' if ok else 'FAIL'}  ORT {rec['ort_ms']:.0f} ms, eager "
                              f"{rec['eager_ms']:.0f} ms", flush=True)
                        if out:
                            out.write(json.dumps(rec) + "\n")
                            out.flush()
                del sess
    print(f"{failures} failing case(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
