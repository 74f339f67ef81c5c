"""The driver of a corpus run: resume, dispatch, status table, reduce.

1. Resume: a video whose result file is trustworthy (``read_result``: same bundle, same inputs)
   is skipped; every other video is (re)computed.
2. Dispatch: longest videos first onto ``workers`` worker slots (``LocalPool`` or ``RayPool``),
   one call in flight per slot. A worker that dies is replaced; its video is retried up to
   ``max_retries`` times, then recorded as failed. A video whose inputs are bad fails alone.
   The driver writes each result atomically as it arrives (the checkpoint a rerun resumes
   from) and appends one row to ``status.jsonl``.
3. Reduce: every trustworthy result, in manifest order, into the official predictions JSON
   (``reduce.py``).

``OUT/.lock`` keeps a second driver out of the same folder while one runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from hieramamba import errors
from hieramamba.artifacts import BundleManifest, bundle_fingerprint, write_atomic
from hieramamba.errors import CheckpointError, InputError

from .manifest import longest_first, write_manifest
from .reduce import reduce_results
from .results import read_result, result_path, task_hash, write_result
from .worker import WorkerConfig

ENGINES = ("local", "ray")
TEST_KILL_ENV = "HIERAMAMBA_CORPUS_TEST_KILL"  # test hook: see worker.py


@dataclass(frozen=True)
class RunOptions:
    engine: str = "local"
    workers: int = 1
    threads: Optional[int] = None       # per worker; default: this machine's CPUs / workers (1 on a cluster)
    address: Optional[str] = None       # Ray cluster to join (--engine ray)
    max_retries: int = 2                # per video, when its worker dies
    progress: bool = False
    ranks: tuple = (1, 5)
    iou_threshs: tuple = (0.3, 0.5)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.address is not None and self.engine != "ray":
            raise InputError("--address names a Ray cluster: use it with --engine ray")


@dataclass
class RunSummary:
    out: str
    engine: str
    workers: int
    videos: int
    queries: int
    grounded: int = 0         # computed by this run
    skipped: int = 0          # trustworthy results from an earlier run
    failed: int = 0
    recomputed: int = 0       # result files found untrustworthy (other bundle / inputs, corrupt)
    worker_deaths: int = 0
    seconds: float = 0.0
    metrics: Optional[dict] = None   # the predictions' summary (R@k × IoU) when annotated
    failed_ids: list = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.failed > 0

    def line(self) -> str:
        head = f"partial: {self.failed} of {self.videos} videos failed (see {self.out}/status.jsonl); " \
            if self.partial else ""
        return (f"ground-corpus: {head}{self.videos} videos, {self.queries} queries: {self.grounded} grounded, "
                f"{self.skipped} skipped (done before), {self.failed} failed, {self.worker_deaths} worker deaths, "
                f"{self.seconds:.1f} s, engine {self.engine} × {self.workers} → {self.out}")


class StatusTable:
    """``status.jsonl``: one row per video of this run (``video_id``, ``status`` done / skipped /
    failed, ``queries``, ``seconds``, ``worker``, ``attempts``, ``error``), appended as videos
    finish, so an interrupted run still says what it did."""

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")

    def add(self, task, status: str, seconds=None, worker=None, attempts: int = 0, error=None) -> None:
        row = {"video_id": task.video_id, "status": status, "queries": task.num_queries, "seconds": seconds,
               "worker": worker, "attempts": attempts, "error": error}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@contextmanager
def run_lock(out: Path):
    with open(out / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"--out {out}: another ground-corpus run is writing there") from None
        yield


def default_threads(options: RunOptions) -> int:
    if options.threads is not None:
        return options.threads
    if options.engine == "ray" and options.address is not None:
        return 1  # nodes may differ: ask for more with --threads
    return max(1, (os.cpu_count() or 1) // options.workers)


def make_pool(config: WorkerConfig, options: RunOptions, threads: int):
    if options.engine == "local":
        from .local_engine import LocalPool

        return LocalPool(config)
    from .ray_engine import RayPool

    return RayPool(config, threads, address=options.address,
                   num_cpus=None if options.address else options.workers * threads)


def _init_error(outcome: dict) -> Exception:
    """A worker that could not open the bundle stops the run with that error's type."""
    cls = getattr(errors, outcome.get("error_type", ""), None)
    cls = cls if isinstance(cls, type) and issubclass(cls, errors.HieraMambaError) else errors.HieraMambaError
    return cls(outcome["error"])


def dispatch(pool, tasks, workers: int, max_retries: int, finish) -> int:
    """Run ``tasks`` on ``workers`` slots of ``pool``; ``finish(task, outcome, attempts)`` per
    video (outcome kind ``result`` or ``error``). Returns how many workers died."""
    queue, busy, attempts, deaths = deque(tasks), {}, Counter(), 0
    free = list(range(min(workers, len(queue))))[::-1]
    while queue or busy:
        while free and queue:
            slot, task = free.pop(), queue.popleft()
            pool.submit(slot, task)
            busy[slot] = task
        for slot, outcome in pool.wait():
            task = busy.pop(slot, None)
            if task is None:  # an idle worker died: the slot gets a fresh one when next used
                continue
            free.append(slot)
            attempts[task.video_id] += 1
            if outcome is None:
                deaths += 1
                if attempts[task.video_id] <= max_retries:
                    queue.appendleft(task)  # a fresh worker takes the slot
                    continue
                outcome = {"kind": "error", "worker": None, "seconds": None,
                           "error": f"its worker died while grounding it, {attempts[task.video_id]} time(s) "
                                    "(killed, out of memory or a crash); no retries left"}
            if outcome["kind"] == "init_error":
                raise _init_error(outcome)
            finish(task, outcome, attempts[task.video_id])
    return deaths


def run_corpus(tasks, out, config: WorkerConfig, options: RunOptions = RunOptions()) -> RunSummary:
    """Ground every task (``manifest.VideoTask``) with the bundle of ``config`` into ``out``;
    see the module docstring. Returns the run's summary (also written to ``summary.json``)."""
    t0 = time.perf_counter()
    out = Path(out)
    BundleManifest.read(config.bundle)  # a bad bundle is one clear error before any work
    bundle = bundle_fingerprint(config.bundle)
    (out / "results").mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        return _run(tasks, out, config, options, bundle, t0)


def _resume(tasks, out: Path, bundle: str, hashes: dict, status: StatusTable, summary: RunSummary) -> list:
    """The tasks without a trustworthy result; the others are listed as skipped."""
    todo = []
    for t in tasks:
        doc, reason = read_result(out, t, bundle, hashes[t.video_id])
        if doc is not None:
            summary.skipped += 1
            status.add(t, "skipped", doc.get("seconds"), doc.get("worker"))
        else:
            summary.recomputed += reason is not None
            todo.append(t)
    return todo


def _run(tasks, out: Path, config: WorkerConfig, options: RunOptions, bundle: str, t0: float) -> RunSummary:
    from tqdm.auto import tqdm

    hashes = {t.video_id: task_hash(t, config.settings) for t in tasks}
    write_manifest(tasks, out / "manifest.jsonl")
    summary = RunSummary(out=str(out), engine=options.engine, workers=options.workers, videos=len(tasks),
                         queries=sum(t.num_queries for t in tasks))
    status = StatusTable(out / "status.jsonl")
    todo = _resume(tasks, out, bundle, hashes, status, summary)
    kill = os.environ.get(TEST_KILL_ENV)
    if kill:
        config = replace(config, kill_video=kill, kill_marker=str(out / f".test-kill-{result_path(out, kill).stem}"))
    threads = default_threads(options)
    if config.backend == "onnxruntime":
        config = replace(config, threads=threads)
    show = options.progress
    videos_bar = tqdm(total=len(tasks), initial=summary.skipped, desc="videos", unit="video", disable=not show)
    queries_bar = tqdm(total=summary.queries, initial=summary.queries - sum(t.num_queries for t in todo),
                       desc="queries", unit="query", disable=not show)

    def finish(task, outcome, attempts):
        if outcome["kind"] == "result" and outcome["bundle"] != bundle:  # a node with another bundle there
            raise CheckpointError(f"worker {outcome['worker']} opened another bundle at {config.bundle} than the "
                                  "driver (its manifest hash differs): every node needs the same bundle")
        if outcome["kind"] == "result":
            write_result(out, task, outcome["predictions"], bundle, hashes[task.video_id], outcome["seconds"],
                         outcome["worker"])
            summary.grounded += 1
            status.add(task, "done", outcome["seconds"], outcome["worker"], attempts)
        else:
            result_path(out, task.video_id).unlink(missing_ok=True)  # an untrustworthy leftover
            summary.failed += 1
            summary.failed_ids.append(task.video_id)
            status.add(task, "failed", outcome.get("seconds"), outcome.get("worker"), attempts, outcome["error"])
            videos_bar.set_postfix(failed=summary.failed)
        videos_bar.update(1)
        queries_bar.update(task.num_queries)

    try:
        if todo:
            pool, finished = make_pool(config, options, threads), False
            try:
                summary.worker_deaths = dispatch(pool, longest_first(todo), options.workers, options.max_retries,
                                                 finish)
                finished = True
            finally:
                pool.close(finished)
    finally:
        status.close()
        videos_bar.close()
        queries_bar.close()
    result = reduce_results(out, tasks, bundle, hashes, options.ranks, options.iou_threshs)
    if result is not None and "overall_recall_at_iou" in result["summary"]:
        summary.metrics = result["summary"]
    summary.seconds = time.perf_counter() - t0
    body = {**asdict(summary), "bundle": bundle, "threads": threads, "partial": summary.partial}
    write_atomic(out / "summary.json", (json.dumps(body, indent=1) + "\n").encode())
    return summary
