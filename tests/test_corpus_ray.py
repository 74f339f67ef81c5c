"""``hieramamba ground-corpus --engine ray``: Ray actors, each opening the bundle once, against
``hieramamba eval --bundle`` (fp32 bundle: equal entries) with 1 and 2 workers; an actor killed
mid-job (test hook); the driver killed mid-job, then resumed; a private Ray instance started and
stopped by the engine itself.

Ray registers its node on the host's interface address, so every Ray process here runs inside a
network namespace of this module that holds only ``lo`` (``ip netns add``; root needed, else
the module is skipped with the reason): no connection leaves loopback. One Ray head per module
(``ray start --head`` in the namespace) serves the ``--address`` runs. Teardown stops every
process left in the namespace by PID (``ip netns pids``), deletes the namespace and the Ray temp
and home folders.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_corpus import check_resumed, corpus, predictions, status_rows  # noqa: F401  (corpus: the module fixture)

pytest.importorskip("ray", reason="the Ray engine needs the corpus extra (pip install 'hieramamba[corpus]')")

ADDRESS = "127.0.0.1:6379"  # inside the namespace: nothing else listens there


@dataclass
class Namespace:
    name: str
    env: dict

    def run(self, *args, env=None, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.name, *map(str, args)], env={**self.env, **(env or {})},
                              capture_output=True, text=True, **kwargs)

    def pids(self) -> set:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return {int(p) for p in res.stdout.split()}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stop(ns: Namespace) -> None:
    """Every process in the namespace (all started by this module): SIGTERM, then SIGKILL."""
    for sig, deadline_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
        for pid in ns.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + deadline_s
        while ns.pids() and time.monotonic() < end:
            time.sleep(0.2)
        if not ns.pids():
            return


@pytest.fixture(scope="module")
def netns():
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command: the Ray tests run Ray in a network namespace holding only lo")
    name = f"hm-corpus-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace ({made.stderr.strip()}): the Ray tests keep every "
                    "connection on loopback by running Ray in one that holds only lo")
    home, temp = tempfile.mkdtemp(prefix="hmray-home-"), tempfile.mkdtemp(prefix="hmray-")  # short: socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ns = Namespace(name, {**env, "HOME": home, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": temp})
    try:
        up = ns.run("ip", "link", "set", "lo", "up")
        assert up.returncode == 0, up.stderr
        head = ns.run(sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", "127.0.0.1",
                      "--port", ADDRESS.split(":")[1], "--num-cpus", 2, "--temp-dir", f"{temp}/head",
                      "--include-dashboard", "false", "--disable-usage-stats", timeout=120)
        assert head.returncode == 0, head.stdout + head.stderr
        yield ns
    finally:
        _stop(ns)
        left = ns.pids()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes left in the namespace: {[_cmdline(p) for p in left]}"


def ground_corpus(ns: Namespace, *args, env=None, timeout=300):
    return ns.run(sys.executable, "-m", "hieramamba.cli", "ground-corpus", "--engine", "ray", "--no-progress", *args,
                  env=env, timeout=timeout)


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_actors_give_the_predictions_of_eval_bundle(netns, corpus, tmp_path, workers):  # noqa: F811
    out = tmp_path / "out"
    res = ground_corpus(netns, "--bundle", corpus["bundle"], "--data", corpus["data"], "--out", out,
                        "--workers", workers, "--threads", 1, "--address", ADDRESS)
    assert res.returncode == 0, res.stderr
    assert predictions(out) == corpus["reference"]
    rows = status_rows(out)
    assert {r["status"] for r in rows.values()} == {"done"} and len(rows) == 6
    assert len({r["worker"] for r in rows.values()}) == workers  # one actor per worker, each used
    assert "6 grounded, 0 skipped" in res.stderr and f"ray × {workers}" in res.stderr


def test_a_killed_actor_is_replaced_and_its_video_retried(netns, corpus, tmp_path):  # noqa: F811
    victim = sorted(corpus["reference"]["videos"])[1]
    out = tmp_path / "out"
    res = ground_corpus(netns, "--bundle", corpus["bundle"], "--data", corpus["data"], "--out", out, "--workers", 2,
                        "--threads", 1, "--address", ADDRESS, env={"HIERAMAMBA_CORPUS_TEST_KILL": victim})
    assert res.returncode == 0, res.stderr
    rows = status_rows(out)
    assert rows[victim]["attempts"] == 2 and rows[victim]["status"] == "done"
    assert "1 worker deaths" in res.stderr
    assert predictions(out) == corpus["reference"]


def test_driver_killed_mid_job_then_the_rerun_recomputes_only_the_missing_videos(netns, bundle, tmp_path):
    from hieramamba.data import make_synthetic

    path, _, opt = bundle
    data = tmp_path / "long"
    make_synthetic(data, "tiny", n_videos=10, min_len=1500, max_len=3000, seed=4, queries_per_video=(2, 3),
                   split_fractions=(0, 0, 1))
    out = tmp_path / "out"
    args = ["ip", "netns", "exec", netns.name, sys.executable, "-m", "hieramamba.cli", "ground-corpus", "--engine",
            "ray", "--address", ADDRESS, "--bundle", str(path), "--data", str(data), "--out", str(out),
            "--workers", "1", "--threads", "1", "--no-progress"]
    driver = subprocess.Popen(args, env=netns.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((out / "results").glob("*.json"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    driver.kill()  # `ip netns exec` execs the driver: this PID is the driver's
    driver.communicate()
    done_before = {p.stem for p in (out / "results").glob("*.json")}
    assert driver.returncode == -signal.SIGKILL and 2 <= len(done_before) < 10
    # Ray ends the dead driver's actors.
    end = time.monotonic() + 30
    while any("CorpusWorker" in _cmdline(p) for p in netns.pids()) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any("CorpusWorker" in _cmdline(p) for p in netns.pids())
    res = subprocess.run(args, env=netns.env, capture_output=True, text=True, timeout=300)
    check_resumed(res, out, done_before, path, opt, data)


def test_without_address_the_engine_starts_and_stops_a_private_instance(netns, corpus, tmp_path):  # noqa: F811
    temp = Path(tempfile.mkdtemp(prefix="hmo-"))  # short: Ray's socket paths
    try:
        out = tmp_path / "out"
        res = ground_corpus(netns, "--bundle", corpus["bundle"], "--data", corpus["data"], "--out", out,
                            "--workers", 2, env={"TMPDIR": str(temp)})
        assert res.returncode == 0, res.stderr
        assert predictions(out) == corpus["reference"]
        assert "ray × 2" in res.stderr
        # Its Ray processes (all named by its session folder under TMPDIR) are gone, and so is that folder.
        def own():
            return [p for p in netns.pids() if str(temp) in _cmdline(p)]
        end = time.monotonic() + 15
        while own() and time.monotonic() < end:
            time.sleep(0.2)
        assert not own(), [_cmdline(p) for p in own()]
        # (``.ses`` is ONNX Runtime's: `import onnxruntime` writes it into TMPDIR)
        assert [p.name for p in temp.iterdir() if p.name != ".ses"] == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)
