"""The ``nsys stats --report nvtx_sum --format csv`` parser on a committed, hand-made sample
(tests/data/nsys_nvtx_sum_sample.csv; see its header) and the printed Nsight commands."""

from pathlib import Path

import pytest

from hieramamba.cli import main
from hieramamba.profiling.nsys import (format_summary, parse_file, parse_nvtx_sum_csv, profile_command,
                                       stats_command, summarize_ranges)
from hieramamba.errors import ProfilingError

SAMPLE = Path(__file__).parent / "data" / "nsys_nvtx_sum_sample.csv"


def test_parser_reads_sample_strips_domain_and_drops_other_domains():
    rows = parse_file(SAMPLE)
    names = [r["range"] for r in rows]
    assert names[:3] == ["amp0", "amp0.hydra.scan", "amp0.hydra.in_proj"]
    assert "step" not in names and len(rows) == 9
    heads = next(r for r in rows if r["range"] == "heads")
    assert heads["total_ns"] == 1_500_000 and heads["instances"] == 2 and heads["min_ns"] == 700_000
    assert heads["raw_range"] == "hieramamba:heads" and heads["style"] == "PushPop"


def test_summary_shares_and_level_aggregates():
    summary = {r["range"]: r for r in summarize_ranges(parse_file(SAMPLE))}
    # Roots: amp0 3.0 + amp1 2.0 + fusion_early 2.5 + heads 1.5 + text_encode 1.0 = 10 ms.
    assert summary["amp0.hydra.scan"]["share_pct"] == pytest.approx(12.0)
    assert summary["heads"]["mean_ms"] == pytest.approx(0.75)
    agg = summary["hydra.scan (all levels)"]
    assert agg["total_ms"] == pytest.approx(1.8) and agg["instances"] == 2
    assert "| amp0.hydra.scan | 1 | 1.20 |" in format_summary(list(summary.values()))


def test_parser_errors_name_the_problem():
    with pytest.raises(ProfilingError, match="no nvtx_sum header"):
        parse_nvtx_sum_csv("Name,Total\nk,1\n")
    bad = '"Time (%)","Total Time (ns)","Instances","Range"\n"1","lots","1","x"\n'
    with pytest.raises(ProfilingError, match="Total Time"):
        parse_nvtx_sum_csv(bad)


def test_commands_use_capture_range_and_nvtx_sum(capsys):
    cmd = profile_command("hm_x", ["--config", "ego4d"])
    assert "--capture-range=cudaProfilerApi" in cmd and "--trace=cuda,nvtx" in cmd and "HIERAMAMBA_NVTX=1" in cmd
    assert stats_command("hm_x") == "nsys stats --report nvtx_sum --format csv --output hm_x hm_x.nsys-rep"
    assert main(["profile", "--config", "ego4d", "--clips", "2304", "--print-commands"]) == 0
    out = capsys.readouterr().out
    assert "nsys profile" in out and "--mode nvtx" in out and "--parse hm_ego4d_2304x1_nvtx_sum.csv" in out
    assert main(["profile", "--parse", str(SAMPLE)]) == 0
    assert "amp0.hydra.scan" in capsys.readouterr().out


def test_profile_record_mode_cli(capsys, tmp_path):
    out = tmp_path / "p.json"
    assert main(["profile", "--config", "tiny", "--clips", "64", "--repeats", "1", "--threads", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "amp0.hydra.scan" in text and "decode_topk" in text and "capture range: none" in text
