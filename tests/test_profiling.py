"""profiling/: NVTX no-op and recording paths, the bench harness on the tiny config, and reports
rendered from a recorded bench JSON (tests/data/bench_tiny_sample.json, made by
``hieramamba bench --config tiny``)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from hieramamba.config import load_config
from hieramamba.errors import HieraMambaError, InputError
from hieramamba.model import build_model
from hieramamba import nvtx
from hieramamba.profiling.bench import BenchSettings, make_inputs, measure_memory_subprocess, run_bench, write_outputs
from hieramamba.profiling.report import load_report, markdown_report

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    opt = load_config("tiny")
    return build_model(opt).eval(), opt


@pytest.fixture(autouse=True)
def _profiling_off():
    nvtx.disable()
    yield
    nvtx.disable()


def _forward(model, opt, clips=64):
    vid, vmask, groups = make_inputs(model, opt, clips, 2, None)
    with torch.inference_mode():
        return model.forward_levels(vid, vmask, *groups[0])


def test_disabled_path_imports_nothing_and_returns_shared_noop():
    code = ("import sys\nfrom hieramamba import nvtx\n"
            "assert nvtx.nvtx_range('a') is nvtx.nvtx_range('b')\n"
            "with nvtx.nvtx_range('hydra.scan'): pass\n"
            "assert 'nvtx' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != nvtx.ENV_VAR}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_disabled_model_makes_no_nvtx_calls_and_outputs_match_enabled(tiny, monkeypatch):
    model, opt = tiny
    calls = []
    fake = types.ModuleType("nvtx")

    class Domain:
        def get_event_attributes(self, message):
            return message

        def push_range(self, attrs):
            calls.append(("push", attrs))

        def pop_range(self):
            calls.append(("pop",))

    fake.get_domain = lambda name: (calls.append(("domain", name)), Domain())[1]
    monkeypatch.setitem(sys.modules, "nvtx", fake)
    off = _forward(model, opt)
    assert calls == []
    with nvtx.profiling("nvtx"):
        on = _forward(model, opt)
    assert calls[0] == ("domain", "hieramamba")
    pushed = [c[1] for c in calls if c[0] == "push"]
    assert sum(c[0] == "pop" for c in calls) == len(pushed)
    for name in ("text_encode", "vid_proj", "fusion_early", "backbone.embed", "amp0", "amp0.interleave",
                 "amp0.hydra.in_proj", "amp0.hydra.conv", "amp0.hydra.scan", "amp0.hydra.norm_out",
                 "amp0.gate1", "amp0.local_attn", "amp0.gate2", "amp0.ffn", "amp0.split", "amp5.hydra.scan",
                 "fusion_late[0]", "fusion_late[5]", "heads"):
        assert name in pushed, name
    for a, b in zip(torch.utils._pytree.tree_leaves(off), torch.utils._pytree.tree_leaves(on)):
        assert torch.equal(a, b)


def test_record_mode_gives_per_range_breakdown_including_decoding(tiny):
    from hieramamba.inference import Grounder
    from hieramamba.profiling.nsys import rows_from_recording, summarize_ranges

    model, opt = tiny
    g = torch.Generator().manual_seed(1)
    video, query = torch.randn(100, 32, generator=g), torch.randn(5, 32, generator=g)
    with nvtx.profiling("record"):
        Grounder(model, opt).ground(video, [query, query], fps=30.0)
        rec = nvtx.recorded()
    assert nvtx.mode() == "off"
    assert {"decode_topk", "softnms_host", "amp2.hydra.scan", "heads"} <= set(rec)
    assert len(rec["decode_topk"]) == 2 and len(rec["heads"]) == 6
    assert all(ns >= 0 for v in rec.values() for ns in v)
    summary = {r["range"]: r for r in summarize_ranges(rows_from_recording(rec))}
    assert summary["hydra.scan (all levels)"]["instances"] == 6


def test_chunked_runtime_has_a_range_per_stage_call(tiny):
    """Every stage call of the chunked runtime is one range named after the stage and level,
    whatever the backend: ranges counted against the calls the backend received."""
    from collections import Counter

    from hieramamba.runtime import GroundingRuntime
    from hieramamba.runtime.backends.torch import TorchBackend
    from hieramamba.stage_table import STAGE_NAMES

    calls = Counter()

    class CountingBackend(TorchBackend):
        def call(self, stage, level, inputs):
            assert stage in STAGE_NAMES
            calls[f"runtime.{stage}" if level is None else f"runtime.{stage}[{level}]"] += 1
            return super().call(stage, level, inputs)

    model, opt = tiny
    rt = GroundingRuntime(CountingBackend(model, opt), chunk=16)
    g = torch.Generator().manual_seed(2)
    video, query = torch.randn(300, 32, generator=g), torch.randn(5, 32, generator=g)
    with nvtx.profiling("record"):
        rt.ground(video, [query], fps=30.0)
        rec = nvtx.recorded()
    runtime_ranges = {k: len(v) for k, v in rec.items() if k.startswith("runtime.")}
    assert runtime_ranges == dict(calls)
    assert calls["runtime.text"] == 1 and calls["runtime.scan[0]"] > calls["runtime.post[0]"] > 1
    calls.clear()
    rt.ground(video, [query], fps=30.0)  # profiling off: the same calls
    assert sum(calls.values()) == sum(runtime_ranges.values())


def test_enabled_ranges_are_skipped_while_exporting():
    class M(torch.nn.Module):
        def forward(self, x):
            with nvtx.nvtx_range("hydra.scan"):
                return x * 2

    with nvtx.profiling("record"):
        ep = torch.export.export(M(), (torch.ones(3),), strict=False)
        assert nvtx.recorded() == {}
    assert torch.equal(ep.module()(torch.ones(3)), torch.full((3,), 2.0))


def test_mode_switch_is_validated_and_overhead_is_small():
    with pytest.raises(HieraMambaError, match="profiling mode"):
        nvtx.enable("fast")
    assert nvtx.measure_disabled_overhead(20_000)["ns_per_range"] < 20_000  # generous: shared CI cores


def test_fused_path_registers_its_cuda_kernel_only_around_its_calls(tmp_path, tiny):
    """The GPU path's bookkeeping, run on CPU (where the CUDA entry is registered but unused):
    the kernel is plugged in for the call and removed after it, and the outputs are eager fp16's."""
    from hieramamba.ops import hydra_scan as hydra_scan_fn
    from hieramamba.profiling.paths import BenchContext, _eager_runner, _fused_runner

    ops_module = sys.modules[hydra_scan_fn.__module__]
    model, opt = tiny
    ctx = BenchContext(model=model, opt=opt, device="cpu", threads=1, workdir=tmp_path)
    inputs = make_inputs(model, opt, 64, 1, None)
    seen = []
    original = _eager_runner

    def spy(c, dtype_name):
        run = original(c, dtype_name)
        return lambda x: (seen.append("cuda" in ops_module._KERNELS), run(x))[1]

    import hieramamba.profiling.paths as paths
    paths._eager_runner = spy
    try:
        out = _fused_runner(ctx)(inputs)
    finally:
        paths._eager_runner = original
    assert seen == [True] and "cuda" not in ops_module._KERNELS
    want = original(ctx, "float16")(inputs)
    for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(want)):
        assert (a == b).all()


def test_bench_harness_tiny(tmp_path, tiny):
    settings = BenchSettings(config="tiny", clips=(32, 64), queries=(1, 2), warmup=1, repeats=2, threads=1,
                             paths=("eager_fp32", "eager_bf16", "eager_cuda_graphs", "eager_fused",
                                    "runtime_chunked", "ort_portable"),
                             isolate_memory=False, workdir=str(tmp_path / "work"), export=False)
    report = run_bench(settings, log=lambda m: None)
    rows = {(r["path"], r["case"]["clips"], r["case"]["queries"]): r for r in report["results"]}
    assert len(rows) == 6 * 4
    assert rows[("ort_portable", 32, 1)]["status"] == "skipped"  # no file in workdir, export off
    ref = rows[("eager_fp32", 64, 2)]
    assert ref["status"] == "ok" and ref["vs_eager"]["max_abs_err_logits"] == 0
    assert ref["latency_s"]["p50"] > 0 and ref["throughput_qps"] > 0
    assert ref["case"]["padded_clips"] == 64 and ref["case"]["groups"] == 1
    bf16 = rows[("eager_bf16", 32, 1)]
    assert bf16["status"] == "ok" and bf16["speedup_vs_eager"] > 0 and bf16["vs_eager"]["finite"]
    if not torch.cuda.is_available():
        assert rows[("eager_cuda_graphs", 32, 1)]["status"] == "skipped"
        assert "CUDA only" in report["paths"]["eager_fused"]["reason"]
    rt = rows[("runtime_chunked", 64, 2)]
    assert rt["status"] == "ok" and rt["vs_eager"]["top1_equal"], rt  # the chunked runtime is exact
    files = write_outputs(report, tmp_path / "out")
    md = Path(files["markdown"]).read_text()
    assert "eager_bf16" in md and "Not measured" in md
    assert json.loads(Path(files["json"]).read_text())["schema"] == "hieramamba.bench/1"


def test_memory_is_measured_in_a_fresh_process(tmp_path):
    settings = BenchSettings(config="tiny", paths=("eager_fp32",), threads=1)
    mem = measure_memory_subprocess(settings, "eager_fp32", 32, 1, tmp_path, timeout=300)
    assert "error" not in mem, mem
    assert mem["peak_rss_mb"] >= mem["rss_before_run_mb"] > 0 and "fresh process" in mem["kind"]


def test_unknown_path_and_bad_workload_are_input_errors(tiny):
    model, opt = tiny
    with pytest.raises(InputError, match="unknown bench paths"):
        run_bench(BenchSettings(paths=("eager_fp64",), isolate_memory=False))
    with pytest.raises(InputError, match="max_text_len"):
        make_inputs(model, opt, 32, 1, 99)


def test_report_from_recorded_json(tmp_path):
    report = load_report(DATA / "bench_tiny_sample.json")
    md = markdown_report(report)
    assert md.startswith("## tiny")
    assert "| 64 | 1 | eager_fp32 |" in md and "| 128 | 2 | eager_bf16 |" in md
    for row in report["results"]:
        if row["status"] != "ok":
            assert f"`{row['path']}` **{row['status']}**" in md
    files = write_outputs(report, tmp_path)
    pytest.importorskip("matplotlib")
    for stem in ("latency_vs_length", "memory_vs_length", "speedup_vs_eager"):
        assert Path(files[stem]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_gpu_memory_when_measured(tmp_path):
    """A GPU run's memory (torch allocator peak and device-wide use) gets its own columns, and
    the memory plot uses the GPU peak; a CPU report keeps its columns."""
    report = load_report(DATA / "bench_tiny_sample.json")
    assert "GPU peak MB" not in markdown_report(report)
    row = next(r for r in report["results"] if r["status"] == "ok" and r["path"] == "eager_fp32")
    row.setdefault("memory", {}).update(cuda_max_allocated_mb=123.4, cuda_device_used_mb=2048.0)
    md = markdown_report(report)
    header = next(line for line in md.splitlines() if line.startswith("| clips"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    line = next(x for x in md.splitlines() if x.startswith(f"| {row['case']['clips']} | {row['case']['queries']} | eager_fp32 |"))
    values = dict(zip(cells, [c.strip() for c in line.strip("|").split("|")]))
    assert values["GPU peak MB (torch)"] == "123" and values["GPU used MB (device)"] == "2048"
    assert len(md.splitlines()[md.splitlines().index(header) + 1].strip("|").split("|")) == len(cells)


def test_report_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(HieraMambaError, match="schema"):
        load_report(p)


def test_missing_cuda_device_is_a_clear_error(capsys):
    from hieramamba.cli import main
    from hieramamba.device import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="not a torch device"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
        return
    for cmd in (["bench", "--config", "tiny", "--device", "cuda"], ["profile", "--config", "tiny", "--device", "cuda"]):
        assert main(cmd) == 2
        assert "device 'cuda' requested but CUDA is not available" in capsys.readouterr().err
    with pytest.raises(InputError, match="CUDA is not available"):
        from hieramamba.inference import Grounder
        Grounder(build_model(load_config("tiny")), load_config("tiny"), device="cuda")


def test_gpu_check_script_selects_existing_tests_and_paths():
    """scripts/gpu_checks.sh (run on a lent GPU, never in CI) must not rot: it parses, its
    pytest selection finds the GPU tests, and every bench path it names is registered."""
    import re

    from hieramamba.profiling.paths import REGISTRY

    root = Path(__file__).resolve().parent.parent
    script = (root / "scripts" / "gpu_checks.sh").read_text()
    for name in ("gpu_checks.sh", "prepare_gpu_carry.sh"):
        subprocess.run(["bash", "-n", str(root / "scripts" / name)], check=True)
    files = re.search(r"step gpu_tests \d+ python3 -m pytest [^\n]*\\\n\s+(\S+) (\S+) -k \"([^\"]+)\"", script)
    assert files, "gpu_tests step not found"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          files.group(1), files.group(2), "-k", files.group(3)],
                         cwd=root, capture_output=True, text=True)
    collected = out.stdout
    for test in ("test_cuda_kernel_matches_float64_oracle", "test_real_cuda_graphs_match_eager_on_gpu"):
        assert test in collected, collected[-2000:]
    for used in re.findall(r"python3 (scripts/\S+\.py|benchmarks/\S+\.py)", script):
        assert (root / used).is_file(), used
    paths = re.search(r"--paths \\\n\s+(\S+)", script).group(1).split(",")
    assert paths and all(p in REGISTRY for p in paths), paths
