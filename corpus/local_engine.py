"""The local engine: one spawned process per worker slot on this machine, each opening the bundle
once (``CorpusWorker``) and grounding one video per message. The driver talks to each over its
own pipe, so it always knows which video a worker holds: a worker that dies (its pipe reads
end-of-file) is reported for exactly that video, and a fresh process takes its slot.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import wait as wait_connections
from typing import Optional

from .worker import CorpusWorker, WorkerConfig


def _serve(conn, config: WorkerConfig, device: Optional[str]) -> None:
    """A worker process: open the bundle, then answer tasks until told to stop or the driver is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    worker = CorpusWorker(config, device)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the driver exited
            return
        if task is None:
            return
        try:
            conn.send(worker.ground(task))
        except OSError:  # the driver exited while this video ran
            return


class LocalPool:
    """Worker processes by slot: ``submit(slot, task)`` (starting the slot's worker if it has
    none), ``wait()`` → ``[(slot, outcome)]`` with outcome None when the worker died (the slot is
    then empty), ``close()``. With ``--backend
    tensorrt`` worker ``slot`` runs on ``cuda:<slot>`` (one worker per GPU)."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.context = multiprocessing.get_context("spawn")  # no forked ONNX Runtime / CUDA state
        self.workers = {}  # slot -> (process, connection)

    def start(self, slot: int) -> None:
        device = f"cuda:{slot}" if self.config.backend == "tensorrt" else None
        parent, child = self.context.Pipe()
        proc = self.context.Process(target=_serve, args=(child, self.config, device), daemon=True,
                                    name=f"hieramamba-corpus-{slot}")
        proc.start()
        child.close()  # only the worker holds its end: its death reads as end-of-file here
        self.workers[slot] = (proc, parent)

    def submit(self, slot: int, task) -> None:
        if slot not in self.workers:
            self.start(slot)
        try:
            self.workers[slot][1].send(task)
        except OSError:  # it died since its last answer: wait() reads the end-of-file
            pass

    def wait(self, timeout: Optional[float] = None) -> list:
        by_conn = {conn: slot for slot, (_, conn) in self.workers.items()}
        events = []
        for conn in wait_connections(list(by_conn), timeout):
            slot = by_conn[conn]
            try:
                events.append((slot, conn.recv()))
            except (EOFError, OSError):
                self._discard(slot)
                events.append((slot, None))
        return events

    def _discard(self, slot: int) -> None:
        proc, conn = self.workers.pop(slot)
        conn.close()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()

    def close(self, finished: bool = True) -> None:
        """Stop every worker: idle ones (``finished``) are asked to exit, busy ones (an
        interrupted run) are terminated."""
        for slot, (proc, conn) in list(self.workers.items()):
            try:
                conn.send(None)
            except OSError:
                pass
        for slot in list(self.workers):
            proc, conn = self.workers.pop(slot)
            proc.join(timeout=10 if finished else 0.5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
