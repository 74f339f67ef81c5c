"""Nsight Systems recipe and the ``nsys stats`` NVTX summary parser (``hieramamba profile``).

Capture (the workload calls ``cudaProfilerStart/Stop`` around the timed runs, so warm-up and
model building stay outside the report; NVTX ranges are switched on by ``HIERAMAMBA_NVTX=1``)::

    HIERAMAMBA_NVTX=1 nsys profile --trace=cuda,nvtx,osrt --capture-range=cudaProfilerApi \\
        --capture-range-end=stop --output=hm_ego4d --force-overwrite=true \\
        hieramamba profile --config ego4d --clips 2304 --queries 1 --mode nvtx

Summary per NVTX range, as CSV, then per-range table of this package::

    nsys stats --report nvtx_sum --format csv --output hm_ego4d hm_ego4d.nsys-rep
    hieramamba profile --parse hm_ego4d_nvtx_sum.csv

``nvtx_sum`` CSV columns (nanoseconds): ``Time (%)``, ``Total Time (ns)``, ``Instances``,
``Avg (ns)``, ``Med (ns)``, ``Min (ns)``, ``Max (ns)``, ``StdDev (ns)``, ``Style``, ``Range``.
Numbers may carry thousands separators; ``nsys stats`` may print lines before the header
(written to stdout without ``--output``). Range names may carry a domain prefix
(``hieramamba:hydra.scan``) or a bare leading ``:``; both are stripped for our domain.
"""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

from hieramamba.errors import ProfilingError
from hieramamba.nvtx import DOMAIN

NVTX_SUM_COLUMNS = ("Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)",
                    "Max (ns)", "StdDev (ns)", "Style", "Range")
_NUMERIC = {"Time (%)": "time_pct", "Total Time (ns)": "total_ns", "Instances": "instances",
            "Avg (ns)": "avg_ns", "Med (ns)": "med_ns", "Min (ns)": "min_ns", "Max (ns)": "max_ns",
            "StdDev (ns)": "stddev_ns"}


def profile_command(report_stem: str, workload_args: list[str], trace: str = "cuda,nvtx,osrt") -> str:
    """The ``nsys profile`` line for ``hieramamba profile <workload_args>`` with a capture range."""
    inner = ["hieramamba", "profile", *workload_args]
    return ("HIERAMAMBA_NVTX=1 nsys profile "
            f"--trace={trace} --capture-range=cudaProfilerApi --capture-range-end=stop "
            f"--output={shlex.quote(report_stem)} --force-overwrite=true " + shlex.join(inner))


def stats_command(report_stem: str) -> str:
    stem = shlex.quote(report_stem)
    return f"nsys stats --report nvtx_sum --format csv --output {stem} {stem}.nsys-rep"


def _number(text: str, column: str, line_no: int) -> float:
    t = text.strip().replace(",", "")
    try:
        return float(t)
    except ValueError:
        raise ProfilingError(f"nvtx_sum CSV line {line_no}: column {column!r} is {text!r}, expected a number") from None


def strip_domain(name: str, domain: str = DOMAIN) -> str:
    name = name.strip()
    if name.startswith(domain + ":"):
        return name[len(domain) + 1:]
    if name.startswith(":"):
        return name[1:]
    return name


def parse_nvtx_sum_csv(text: str, domain: str | None = DOMAIN) -> list[dict]:
    """Rows of an ``nsys stats --report nvtx_sum --format csv`` table, numbers as float/int,
    ``range`` with the domain prefix removed and ``raw_range`` as printed. ``domain``: keep
    only ranges whose printed name carries no domain or this one (None: keep all)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if "Total Time (ns)" in line and "Range" in line), None)
    if start is None:
        raise ProfilingError("no nvtx_sum header (a line with 'Total Time (ns)' and 'Range') in the CSV; "
                             "was it made with `nsys stats --report nvtx_sum --format csv`?")
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    missing = [c for c in ("Total Time (ns)", "Instances", "Range") if c not in (reader.fieldnames or [])]
    if missing:
        raise ProfilingError(f"nvtx_sum CSV lacks columns {missing}; found {reader.fieldnames}")
    rows = []
    for k, rec in enumerate(reader, start=start + 2):
        if not rec.get("Range") and not rec.get("Total Time (ns)"):
            continue  # blank trailing lines
        raw = rec["Range"] or ""
        if domain is not None and ":" in raw.split(".")[0] and not raw.startswith((domain + ":", ":")):
            continue  # another domain's range
        row = {"range": strip_domain(raw, domain or DOMAIN), "raw_range": raw, "style": rec.get("Style")}
        for col, key in _NUMERIC.items():
            if rec.get(col) not in (None, ""):
                row[key] = _number(rec[col], col, k)
        row["instances"] = int(row["instances"])
        rows.append(row)
    return rows


def summarize_ranges(rows: list[dict]) -> list[dict]:
    """Per range (all levels kept apart): total/mean ms, instances, share of the root ranges'
    total, and an aggregate over levels (``amp*.hydra.scan`` → ``hydra.scan (all levels)``)."""
    out = []
    names = {r["range"] for r in rows}
    # Roots: ranges not nested by name in another range here (scoped names carry their parent).
    roots = [r for r in rows if "." not in r["range"] or r["range"].split(".")[0] not in names]
    root_total = sum(r["total_ns"] for r in roots)
    for r in sorted(rows, key=lambda r: -r["total_ns"]):
        out.append({"range": r["range"], "instances": r["instances"], "total_ms": r["total_ns"] / 1e6,
                    "mean_ms": r["total_ns"] / max(r["instances"], 1) / 1e6,
                    "share_pct": 100.0 * r["total_ns"] / root_total if root_total else None})
    agg = {}
    for r in rows:
        head, _, rest = r["range"].partition(".")
        if head.startswith("amp") and head[3:].isdigit() and rest:
            a = agg.setdefault(rest, [0.0, 0])
            a[0] += r["total_ns"]
            a[1] += r["instances"]
    for name, (ns, n) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
        out.append({"range": f"{name} (all levels)", "instances": n, "total_ms": ns / 1e6,
                    "mean_ms": ns / max(n, 1) / 1e6,
                    "share_pct": 100.0 * ns / root_total if root_total else None})
    return out


def rows_from_recording(durations: dict[str, list[int]]) -> list[dict]:
    """The CPU fallback: the harness's own per-range recording in the parser's row format."""
    return [{"range": k, "raw_range": k, "style": "recorded", "total_ns": float(sum(v)),
             "instances": len(v)} for k, v in durations.items()]


def format_summary(summary: list[dict], title: str = "") -> str:
    lines = [title] if title else []
    lines += ["| range | instances | total ms | mean ms | share % |", "|---|---:|---:|---:|---:|"]
    for r in summary:
        share = "–" if r["share_pct"] is None else f"{r['share_pct']:.1f}"
        lines.append(f"| {r['range']} | {r['instances']} | {r['total_ms']:.2f} | {r['mean_ms']:.3f} | {share} |")
    return "\n".join(lines) + "\n"


def parse_file(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ProfilingError(f"nsys stats CSV not found: {p}")
    return parse_nvtx_sum_csv(p.read_text())
