"""Triton serving against the real ``tritonserver`` that nvidia-pytriton ships, on loopback only:
answers over HTTP and gRPC equal the direct runtime's on the same bundle (fp32: bitwise, after
the float32 of the wire), bad requests are 400s with the pipeline's message and are counted,
concurrent single-query requests are merged by the dynamic batcher without changing an answer,
the serve canary notices a killed instance and brings it back, shutdown leaves nothing behind,
and ``triton-repo`` output loads in the same binary. Every server is stopped by the test that
started it."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hieramamba.errors import InputError

pytest.importorskip("pytriton", reason="the serve extra (nvidia-pytriton) is not installed")
pytest.importorskip("tritonclient.http", reason="the serve extra (tritonclient) is not installed")

CHUNK = 16  # level tokens per chunk: the longer test videos run in several chunks
CLIPS = (40, 203, 77)


@pytest.fixture(scope="module")
def features(tmp_path_factory, bundle_per_sample):
    plan_dim = bundle_per_sample[1].vid_in_dim
    folder = tmp_path_factory.mktemp("features")
    g = np.random.default_rng(7)
    for i, clips in enumerate(CLIPS):
        np.save(folder / f"v{i}.npy", g.standard_normal((clips, plan_dim)).astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def direct(bundle_per_sample):
    from hieramamba.runtime import GroundingRuntime

    return GroundingRuntime.load(bundle_per_sample[0], chunk=CHUNK, threads=1)


@pytest.fixture(scope="module")
def server(bundle_per_sample, features):
    from hieramamba.serving.repository import ServeOptions
    from hieramamba.serving.server import TritonServer, free_port

    options = ServeOptions(features=str(features), chunk=CHUNK, threads=1, max_batch=8,
                           max_queue_delay_us=300_000)  # a long window: concurrent requests merge
    srv = TritonServer.for_bundle(bundle_per_sample[0], options, http_port=free_port(), grpc_port=free_port(),
                                  metrics_port=free_port())
    with srv:
        yield srv


def queries_for(text_dim, lengths, seed):
    g = np.random.default_rng(seed)
    return [g.standard_normal((n, text_dim)).astype(np.float32) for n in lengths]


def wire(results):
    """The direct runtime's answer as the server sends it: float32 seconds and scores."""
    return [[tuple(float(np.float32(v)) for v in (s.start_sec, s.end_sec, s.score)) for s in segs]
            for segs in results]


def counters(server) -> dict:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out = {}
    for m in re.finditer(r'^hieramamba_requests\{(.*?)\} ([0-9.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(labels["model"], labels["outcome"])] = float(m.group(2))
    return out


@pytest.mark.parametrize("url_of", ["http_url", "grpc_url"])
def test_ground_over_http_and_grpc_equals_the_direct_runtime(server, direct, features, url_of):
    from hieramamba.serving.client import GroundingClient

    text_dim = direct.plan.text_in_dim
    with GroundingClient(getattr(server, url_of)) as client:
        for i, lengths in ((0, (5,)), (1, (3, 9, 1)), (2, (14, 2))):
            video = np.load(features / f"v{i}.npy")
            queries = queries_for(text_dim, lengths, seed=i)
            duration = CLIPS[i] * 16 / 30.0
            got = client.ground(video, queries, fps=30.0, duration=duration)
            assert got == wire(direct.ground(video, queries, fps=30.0, duration=float(np.float32(duration))))
            assert all(len(segs) > 0 for segs in got)


def test_bad_requests_are_400_with_the_pipeline_message_and_counted(server, direct, features):
    from hieramamba.serving.client import GroundingClient, ground_tensors

    text_dim = direct.plan.text_in_dim
    video = np.load(features / "v0.npy")
    good = ground_tensors(video, queries_for(text_dim, (4,), 1), fps=30.0)
    nan_video = dict(good, VIDEO_FEATURES=np.where(np.arange(len(video))[:, None] == 3, np.nan, video).astype(np.float32))
    too_long = ground_tensors(video, queries_for(text_dim, (direct.plan.max_text_len + 1,), 2), fps=30.0)
    bad_lengths = dict(good, QUERY_LENGTHS=np.array([0], np.int32))
    short = dict(good, DURATION=np.array([0.2], np.float32))
    pipeline_errors = [(nan_video, "NaN/Inf (first at row 3)"), (too_long, "more than eval.max_text_len"),
                       (bad_lengths, "QUERY_LENGTHS[0] = 0"), (short, "duration 0.2 s is shorter")]
    triton_errors = [({k: v for k, v in good.items() if k != "FPS"}, "FPS"),
                     (dict(good, VIDEO_FEATURES=video[:, :5].copy()), "VIDEO_FEATURES")]
    before = counters(server)
    with GroundingClient(server.http_url) as client:
        for tensors, words in pipeline_errors + triton_errors:
            with pytest.raises(InputError) as err:
                client.infer("hieramamba_ground", tensors)
            assert words in str(err.value) and "Traceback" not in str(err.value)
        out = client.infer("hieramamba_ground", good)  # still serving
    assert int(out["NUM_SEGMENTS"][0]) > 0
    after = counters(server)
    key = ("hieramamba_ground", "invalid_argument")
    # Triton itself refuses the requests that do not fit config.pbtxt: they never reach the model
    assert after[key] - before.get(key, 0) == len(pipeline_errors)
    assert after[("hieramamba_ground", "success")] - before.get(("hieramamba_ground", "success"), 0) >= 1
    assert after.get(("hieramamba_ground", "error"), 0) == 0


def test_query_model_merges_concurrent_requests_without_changing_answers(server, direct, features):
    from hieramamba.serving.client import GroundingClient

    text_dim = direct.plan.text_in_dim
    jobs = [(f"v{i % 3}", q) for i, q in enumerate(queries_for(text_dim, (3, 7, 2, 5, 9, 4, 6, 1, 8, 3, 2, 5), 11))]
    stats0 = server.statistics("hieramamba_ground_query")

    def one(job):
        with GroundingClient(server.http_url) as client:
            return client.ground_query(job[0], job[1], fps=30.0)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(one, jobs))
    stats1 = server.statistics("hieramamba_ground_query")
    requests = stats1["inference_count"] - stats0["inference_count"]
    executions = stats1["execution_count"] - stats0["execution_count"]
    assert requests == len(jobs) and executions < requests, (requests, executions)
    for (vid, query), got in zip(jobs, answers):
        video = np.load(features / f"{vid}.npy")
        assert got == wire(direct.ground(video, [query], fps=30.0))[0]
    with GroundingClient(server.grpc_url) as client, pytest.raises(InputError, match="unknown VIDEO_ID 'v9'"):
        client.ground_query("v9", jobs[0][1], fps=30.0)


def read_until(pattern: str, timeout: float, seen: list) -> str:
    """The first of the lines a reader thread appends to ``seen`` that matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in seen:
            if re.search(pattern, line):
                return line
        time.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n" + "".join(seen))


def stub_pids(parent: int, model: str) -> list:
    """The python-backend stub processes of ``model`` under the server process ``parent``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and cmd and cmd[0].endswith(b"triton_python_backend_stub") and \
                any(f"/{model}/".encode() in c or c.endswith(f"/{model}/1/model.py".encode()) for c in cmd):
            out.append(int(pid))
    return out


def test_serve_canary_detects_a_killed_instance_and_shutdown_leaves_nothing(bundle_per_sample, direct, features):
    from hieramamba.serving.client import GroundingClient
    from hieramamba.serving.server import free_port

    ports = [free_port() for _ in range(3)]
    workspaces = set(Path("/tmp").glob("hieramamba_serve_*"))
    proc = subprocess.Popen([sys.executable, "-m", "hieramamba.cli", "serve", "--bundle", str(bundle_per_sample[0]),
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                             "--canary-interval", "1", "--threads", "1", "--chunk", str(CHUNK)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    reader = threading.Thread(target=lambda: [seen.append(line) for line in proc.stderr], daemon=True)
    reader.start()
    try:
        read_until(r"ready: hieramamba_ground at http://127\.0\.0\.1:", 120, seen)
        server_pid = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _is_child_tritonserver(int(p), proc.pid))
        stubs = stub_pids(server_pid, "hieramamba_ground")
        assert len(stubs) == 1, stubs
        os.kill(stubs[0], signal.SIGKILL)
        read_until(r"canary: hieramamba_ground failed", 60, seen)
        read_until(r"canary: hieramamba_ground healthy again", 120, seen)
        video = np.load(features / "v1.npy")
        queries = queries_for(direct.plan.text_in_dim, (4, 6), 3)
        with GroundingClient(f"http://127.0.0.1:{ports[0]}") as client:
            assert client.ground(video, queries, fps=30.0) == wire(direct.ground(video, queries, fps=30.0))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, "".join(seen)
    assert "stopping" in "".join(seen)
    assert not list(Path("/dev/shm").glob(f"hieramamba_{proc.pid}_*"))
    assert set(Path("/tmp").glob("hieramamba_serve_*")) == workspaces
    assert not os.path.exists(f"/proc/{server_pid}")


def test_a_killed_serve_takes_its_server_along_and_the_next_start_removes_its_leftovers(bundle_per_sample):
    from hieramamba.serving.server import free_port, remove_stale_leftovers

    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "hieramamba.cli", "serve", "--bundle", str(bundle_per_sample[0]),
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                             "--threads", "1"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    threading.Thread(target=lambda: [seen.append(line) for line in proc.stderr], daemon=True).start()
    try:
        read_until(r"ready: hieramamba_ground", 120, seen)
        server_pid = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _is_child_tritonserver(int(p), proc.pid))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 40
    while os.path.exists(f"/proc/{server_pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{server_pid}"), "tritonserver outlived the serve process"
    leftovers = list(Path("/tmp").glob(f"hieramamba_serve_{proc.pid}_*")) + \
        list(Path("/dev/shm").glob(f"hieramamba_{proc.pid}_*"))
    assert leftovers  # SIGKILL: serve could not clean up
    remove_stale_leftovers()
    assert not any(p.exists() for p in leftovers)


def _is_child_tritonserver(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1]) == parent and "(tritonserver)" in stat
    except OSError:
        return False


def test_triton_repo_loads_in_the_bundled_tritonserver_and_answers_like_serve(bundle_per_sample, direct, features,
                                                                                 tmp_path):
    from hieramamba.cli import main
    from hieramamba.serving.client import GroundingClient
    from hieramamba.serving.server import TritonServer, free_port

    repo = tmp_path / "repo"
    assert main(["triton-repo", "--bundle", str(bundle_per_sample[0]), "--out", str(repo), "--copy-bundle",
                 "--features", str(features), "--chunk", str(CHUNK), "--threads", "1"]) == 0
    assert (repo / "hieramamba_ground" / "bundle" / "manifest.json").is_file()
    video = np.load(features / "v2.npy")
    queries = queries_for(direct.plan.text_in_dim, (5, 2), 4)
    server = TritonServer(repo, ["hieramamba_ground", "hieramamba_ground_query"], http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port())
    with server, GroundingClient(server.grpc_url) as client:
        assert client.ground(video, queries, fps=30.0) == wire(direct.ground(video, queries, fps=30.0))
        assert client.ground_query("v2", queries[1], fps=30.0) == wire(direct.ground(video, [queries[1]], fps=30.0))[0]


def test_official_bundles_are_refused_for_the_query_model(bundle, bundle_per_sample, features, tmp_path, capsys):
    from hieramamba.cli import main
    from hieramamba.serving.server import ServerError, TritonServer, free_port

    # before anything starts: one line, exit 2
    assert main(["serve", "--bundle", str(bundle[0]), "--features", str(features)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "per_sample" in err and "Traceback" not in err
    # and by the model itself at load (a repository pointed at an official bundle by hand)
    repo = tmp_path / "repo"
    assert main(["triton-repo", "--bundle", str(bundle_per_sample[0]), "--out", str(repo), "--features",
                 str(features)]) == 0
    config = repo / "hieramamba_ground_query" / "config.pbtxt"
    config.write_text(config.read_text().replace(str(bundle_per_sample[0].resolve()), str(bundle[0].resolve())))
    server = TritonServer(repo, ["hieramamba_ground", "hieramamba_ground_query"], http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port())
    with pytest.raises(ServerError) as exc:
        server.start(timeout=120)
    assert "per_sample" in str(exc.value)


def test_ground_cli_with_server_prints_what_it_prints_with_the_bundle(server, bundle_per_sample, features, tmp_path):
    import json

    from hieramamba.cli import main

    queries = queries_for(bundle_per_sample[1].text_in_dim, (6, 3), 9)
    paths = []
    for i, q in enumerate(queries):
        paths += ["--query", str(tmp_path / f"q{i}.npy")]
        np.save(tmp_path / f"q{i}.npy", q)
    common = ["ground", "--video", str(features / "v1.npy"), "--fps", "30"] + paths
    assert main(common + ["--server", server.grpc_url, "--out", str(tmp_path / "server.json")]) == 0
    assert main(common + ["--bundle", str(bundle_per_sample[0]), "--chunk", str(CHUNK), "--threads", "1",
                          "--out", str(tmp_path / "bundle.json")]) == 0
    got, want = (json.loads((tmp_path / f"{n}.json").read_text())["queries"] for n in ("server", "bundle"))
    assert [q["segments"] for q in got] == [[[float(np.float32(v)) for v in s] for s in q["segments"]] for q in want]


@pytest.mark.parametrize("argv, words", [
    (["serve", "--bundle", "{missing}"], "not a runtime bundle"),
    (["serve", "--bundle", "{bundle}", "--features", "{missing}"], "does not exist"),
    (["serve", "--bundle", "{bundle}", "--gpus", "0"], "--gpus is an option of --backend tensorrt"),
    (["serve", "--bundle", "{bundle}", "--features", "{nonempty}"], "holds no <video_id>.npy file"),
    (["serve", "--bundle", "{bundle}", "--backend", "tensorrt"], "TensorRT is not installed"),
    (["triton-repo", "--bundle", "{bundle}", "--out", "{nonempty}"], "is not empty"),
    (["ground", "--server", "ftp://host", "--video", "{video}", "--query", "{video}", "--fps", "30"],
     "expected http://HOST:PORT or grpc://HOST:PORT"),
    (["ground", "--server", "http://127.0.0.1:9", "--bundle", "{bundle}", "--video", "{video}", "--query", "{video}",
      "--fps", "30"], "exactly one of --experiment"),
    (["ground", "--server", "http://127.0.0.1:9", "--video", "{video}", "--query", "{video}", "--fps", "30"],
     "cannot reach the server"),
])
def test_serving_user_mistakes_end_in_one_line(bundle_per_sample, features, tmp_path, capsys, argv, words):
    from hieramamba.cli import main

    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "x").write_text("x")
    names = {"missing": tmp_path / "missing", "bundle": bundle_per_sample[0], "nonempty": tmp_path / "nonempty",
             "video": features / "v0.npy"}
    if "TensorRT" in words and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: serve --backend tensorrt is not refused")
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
