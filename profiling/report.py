"""Reports from a bench JSON (``hieramamba.bench/1``): a Markdown table and PNG plots.

Works on a recorded file alone (``hieramamba bench --report-only bench.json``), so numbers
measured elsewhere (a lent GPU) render the same way."""

from __future__ import annotations

import json
from pathlib import Path

from hieramamba.errors import InputError, ProfilingError


def load_report(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"bench report not found: {p}")
    try:
        report = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not JSON ({exc})") from exc
    if report.get("schema") != "hieramamba.bench/1":
        raise ProfilingError(f"{p}: schema is {report.get('schema')!r}, expected 'hieramamba.bench/1'")
    return report


def _fmt(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e5:
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def _has_gpu_memory(report: dict) -> bool:
    return any("cuda_max_allocated_mb" in (r.get("memory") or {}) for r in report["results"])


def markdown_report(report: dict) -> str:
    env, st = report["environment"], report["settings"]
    lines = [f"## {st['config']} — {env['date_utc']}", "",
             f"- device: {env['device']} ({env.get('gpu') or env.get('cpu')}, {env.get('cpu_count')} cores, "
             f"{env['threads']} torch threads)",
             f"- versions: python {env['python']}, torch {env['torch']}, onnxruntime {env.get('onnxruntime')}, "
             f"numpy {env['numpy']}",
             f"- weights: {st['weights']}; tokens per query {st['tokens'] or 'min(20, eval.max_text_len)'}; warm-up {st['warmup']}, "
             f"{st['repeats']} timed rounds (paths rotated per round)",
             f"- load average at start: {env.get('load_avg_1m_at_start', '–')}"]
    if report.get("command"):
        lines.append(f"- command: `{report['command']}`")
    gpu = _has_gpu_memory(report)
    lines += ["", "| clips | queries | path | p50 s | p90 s | p99 s | queries/s | × vs eager fp32 | "
              "peak RSS MB | run RSS MB | " + ("GPU peak MB (torch) | GPU used MB (device) | " if gpu else "")
              + "max abs err logits | top-1 equal |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "") + "---:|---|"]
    notes = []
    for r in report["results"]:
        c = r["case"]
        if r["status"] != "ok":
            notes.append((c, r))
            continue
        lat, mem, cmp_ = r["latency_s"], r.get("memory", {}), r.get("vs_eager", {})
        lines.append("| " + " | ".join([
            str(c["clips"]), str(c["queries"]), r["path"], _fmt(lat["p50"]), _fmt(lat["p90"]), _fmt(lat["p99"]),
            _fmt(r["throughput_qps"], 2), _fmt(r.get("speedup_vs_eager"), 2), _fmt(mem.get("peak_rss_mb"), 0),
            _fmt(mem.get("run_rss_mb"), 0)]
            + ([_fmt(mem.get("cuda_max_allocated_mb"), 0), _fmt(mem.get("cuda_device_used_mb"), 0)] if gpu else [])
            + [_fmt(cmp_.get("max_abs_err_logits")), _fmt(cmp_.get("top1_equal"))]) + " |")
    seen = set()
    skipped = []
    for c, r in notes:
        key = (r["path"], r["status"], r.get("reason"))
        if key in seen:
            continue
        seen.add(key)
        skipped.append(f"- `{r['path']}` **{r['status']}**: {r.get('reason')}")
    if skipped:
        lines += ["", "Not measured:", *skipped]
    setups = [f"`{n}` {p['setup_s']:.1f} s" for n, p in report["paths"].items()
              if p["status"] == "ok" and p.get("setup_s", 0) >= 0.5]
    if setups:
        lines += ["", "One-time setup (model copies, ONNX export, session creation): " + ", ".join(setups)]
    return "\n".join(lines) + "\n"


def write_plots(report: dict, out_dir: str | Path) -> dict:
    """``latency_vs_length.png``, ``memory_vs_length.png``, ``speedup_vs_eager.png`` (one line
    per path and query count). Returns the files written; without matplotlib, none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out = Path(out_dir)
    rows = [r for r in report["results"] if r["status"] == "ok"]
    series = {}
    for r in rows:
        series.setdefault((r["path"], r["case"]["queries"]), []).append(r)
    title = f"{report['settings']['config']} on {report['environment']['device']}"
    memory = (("peak GPU memory, torch allocator (MB)", "cuda_max_allocated_mb") if _has_gpu_memory(report)
              else ("peak RSS of a fresh process (MB)", "peak_rss_mb"))
    specs = [("latency_vs_length", "p50 latency (s)", lambda r: r["latency_s"]["p50"], True),
             ("memory_vs_length", memory[0], lambda r: (r.get("memory") or {}).get(memory[1]), False),
             ("speedup_vs_eager", "speed-up vs eager fp32 (×, per-round median)",
              lambda r: r.get("speedup_vs_eager"), False)]
    files = {}
    for stem, ylabel, get, logy in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        for (path, nq), rs in sorted(series.items()):
            pts = sorted((r["case"]["clips"], get(r)) for r in rs if get(r) is not None)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{path}, {nq} q")
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        if stem == "speedup_vs_eager":
            ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("video length (clips)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[stem] = path
    return files
