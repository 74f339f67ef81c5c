"""The Ray engine: one Ray actor per worker slot (``CorpusWorker``: the bundle opened once per
actor; on GPU nodes one GPU per actor), one video per actor call, on a local Ray instance
started here or on a cluster (``address``). The driver keeps one call in flight per actor, so a
dead actor (``RayActorError``) is charged to exactly the video it held; Ray restarts nothing on
its own (``max_restarts=0``): the driver decides whether to retry and starts a fresh actor.

Ray is imported here only, when the engine starts (``import hieramamba.corpus`` stays light).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Optional

from hieramamba.errors import BackendUnavailableError, InputError

from .worker import CorpusWorker, WorkerConfig, one_line


def import_ray():
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("--engine ray needs Ray: pip install 'hieramamba[corpus]'") from None
    return ray


class RayPool:
    """Same interface as ``LocalPool``. Without ``address`` a private local Ray instance
    (``num_cpus`` CPUs, no dashboard, its own temporary folder) lives as long as the pool; with
    one, the pool connects to that cluster and leaves it running. Each actor asks for ``threads``
    CPUs (and one GPU with the tensorrt backend)."""

    def __init__(self, config: WorkerConfig, threads: int, address: Optional[str] = None,
                 num_cpus: Optional[int] = None):
        ray = self.ray = import_ray()
        self.config, self.temp_dir = config, None
        self.actors, self.calls = {}, {}  # slot -> actor; object ref of the call in flight -> slot
        try:
            if address is None:  # a short folder name: Ray's socket paths under it must fit in 107 bytes
                self.temp_dir = tempfile.mkdtemp(prefix="hmray-")
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=self.temp_dir,
                         logging_level=logging.WARNING)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            self.close()
            where = f"--address {address}: cannot connect to a Ray cluster there" if address else \
                "cannot start a local Ray instance"
            raise InputError(f"{where} ({' '.join(str(exc).split())})") from None
        except BaseException:
            self.close()
            raise
        gpus = 1 if config.backend == "tensorrt" else 0
        self._check_resources(threads, gpus)
        self.actor_class = ray.remote(num_cpus=threads, num_gpus=gpus, max_restarts=0,
                                      max_task_retries=0)(CorpusWorker)

    def _check_resources(self, cpus: int, gpus: int) -> None:
        """An actor the cluster has no CPUs/GPUs for would wait forever: say so instead (totals over
        the nodes; an actor larger than every single node still waits)."""
        have = self.ray.cluster_resources()
        if have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
            self.close()
            raise InputError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; "
                             f"a worker needs {cpus} CPU(s) (--threads) and {gpus} GPU(s)")

    def submit(self, slot: int, task) -> None:
        if slot not in self.actors:
            self.actors[slot] = self.actor_class.remote(self.config)
        self.calls[self.actors[slot].ground.remote(task)] = slot

    def wait(self, timeout: Optional[float] = None) -> list:
        ray = self.ray
        ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=timeout)
        events = []
        for ref in ready:
            slot = self.calls.pop(ref)
            try:
                events.append((slot, ray.get(ref)))
            except ray.exceptions.RayActorError:  # the actor died with the video
                ray.kill(self.actors.pop(slot), no_restart=True)
                events.append((slot, None))
            except ray.exceptions.RayError as exc:  # Ray could not run or return the call
                events.append((slot, {"kind": "error", "error": one_line(exc), "worker": None, "seconds": None}))
        return events

    def close(self, finished: bool = True) -> None:
        """Kill the actors (busy or not: ``finished`` changes nothing here), leave or stop Ray."""
        ray = self.ray
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors, self.calls = {}, {}
        if ray.is_initialized():
            ray.shutdown()  # stops a local instance started here; only disconnects from a cluster
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
