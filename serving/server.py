"""Running Triton Inference Server on a bundle (``hieramamba serve``): the ``tritonserver`` binary
and python backend that ``nvidia-pytriton`` ships, on a model repository written into a private
workspace (``serving/repository.py``).

Why a model repository and not PyTriton's ``bind()`` of a Python callable: PyTriton turns every
exception of the callable into an ``INTERNAL`` error carrying the traceback (HTTP 500), while a bad
request must be an ``INVALID_ARG`` error with the pipeline's message (HTTP 400), which a
python-backend model can return. The same repository is what ``hieramamba triton-repo`` writes for
a stock Triton container, so both ways of serving run the same code.

What this module adds around the binary (each seen go wrong without it): the interpreter's
``LIBDIR`` on ``LD_LIBRARY_PATH`` (else the python backend's stub loads another libpython); the
stub for this Python version next to the backend library; readiness only once every model is
loaded (``--strict-readiness``, explicit model control with every model loaded at start); a canary
inference for liveness (readiness stayed 200 while a killed instance failed every request); a
``/dev/shm`` region prefix of our own, so the regions a killed stub leaves are removed at stop;
the whole process group stopped on exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hieramamba.artifacts import pid_alive
from hieramamba.errors import BackendUnavailableError, HieraMambaError

from .repository import ServeOptions, served_models, write_repository

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "hieramamba_"              # + <pid of the serving process>_<random>_
WORKSPACE_PREFIX = "hieramamba_serve_"  # + <pid>_<random>, in the temp folder
SERVE_EXTRA = "pip install 'hieramamba[serve]' (scripts/setup.sh installs it)"


class ServerError(HieraMambaError):
    """Triton did not start, stopped, or a model did not load."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where ``nvidia-pytriton`` keeps the server: its binary, backends, the python-backend stub
    built for this interpreter's version, and the shared libraries the binary links."""

    root: Path
    stub: Path
    libs: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @classmethod
    def find(cls) -> "TritonDistribution":
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise BackendUnavailableError(f"Triton serving needs nvidia-pytriton: {SERVE_EXTRA}")
        package = Path(list(spec.submodule_search_locations)[0])
        root = package / "tritonserver"
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        libs = package.parent / "nvidia_pytriton.libs"
        if not libs.is_dir():  # an editable pytriton keeps them inside the package
            libs = root / "external_libs"
        if not (root / "bin" / "tritonserver").is_file():
            raise BackendUnavailableError(f"nvidia-pytriton at {package} has no tritonserver binary: {SERVE_EXTRA}")
        if not stub.is_file():
            raise BackendUnavailableError(f"nvidia-pytriton has no python-backend stub for Python {version}")
        return cls(root, stub, libs)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so a killed ``serve`` leaves no server running. Start servers
    from a thread that lives as long as they should (the main thread)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def remove_stale_leftovers() -> None:
    """``/dev/shm`` regions and workspaces of servers whose serving process is gone (killed before
    it could clean up); a live process's stay."""
    stale = []
    if SHM_DIR.is_dir():
        stale += [(p, p.name[len(SHM_PREFIX):]) for p in SHM_DIR.glob(f"{SHM_PREFIX}*")]
    stale += [(p, p.name[len(WORKSPACE_PREFIX):]) for p in Path(tempfile.gettempdir()).glob(f"{WORKSPACE_PREFIX}*")]
    for path, rest in stale:
        pid = rest.split("_", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (tests; a small race with other processes is possible)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


class TritonServer:
    """``tritonserver`` on the model ``repository`` (its ``models`` loaded at start), with a private
    workspace for the backend folder and log. Use as a context manager, or ``start()`` /
    ``stop()``; :meth:`for_bundle` writes the repository for a bundle into the workspace. Binds to
    ``host`` (loopback by default)."""

    def __init__(self, repository, models, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, gpu: bool = False, log_file=None,
                 exit_timeout: int = 10):
        self.repository, self.models, self.host = repository, list(models), host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.gpu, self.log_file, self.exit_timeout = gpu, log_file, exit_timeout
        self.process: Optional[subprocess.Popen] = None
        self.workspace: Optional[Path] = None
        self._bundle = None
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{os.urandom(3).hex()}_"

    @classmethod
    def for_bundle(cls, bundle, options: ServeOptions, **kwargs) -> "TritonServer":
        """A server for ``bundle`` as ``options`` say; its repository is written at ``start()``."""
        server = cls(None, served_models(options), gpu=options.backend == "tensorrt", **kwargs)
        server._bundle = (bundle, options)
        return server

    # -- addresses -----------------------------------------------------------------------------
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host()}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host()}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host()}:{self.metrics_port}/metrics"

    # -- life cycle ----------------------------------------------------------------------------
    def _prepare(self, dist: TritonDistribution) -> None:
        ws = self.workspace
        if self._bundle is not None:
            self.repository = ws / "models"
            self.models = write_repository(self._bundle[0], self.repository, self._bundle[1])
        python = ws / "backends" / "python"
        python.mkdir(parents=True)
        for item in (dist.root / "backends" / "python").iterdir():
            os.symlink(item, python / item.name)
        shutil.copy2(dist.stub, python / "triton_python_backend_stub")

    def _command(self, dist: TritonDistribution) -> list:
        ws, gpu = self.workspace, self.gpu
        return [str(dist.binary), f"--model-repository={Path(self.repository).resolve()}",
                f"--backend-directory={ws / 'backends'}",
                f"--cache-directory={dist.root / 'caches'}",
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--allow-metrics=true", f"--allow-gpu-metrics={'true' if gpu else 'false'}",
                "--strict-readiness=true", "--exit-on-error=true", f"--exit-timeout-secs={self.exit_timeout}",
                "--model-control-mode=explicit", "--load-model=*", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}", "--log-verbose=0"]

    def _env(self, dist: TritonDistribution) -> dict:
        env = dict(os.environ)
        libdirs = [str(dist.libs), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = ":".join([d for d in libdirs if d] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def start(self, timeout: float = 180.0) -> "TritonServer":
        dist = TritonDistribution.find()
        remove_stale_leftovers()
        self.workspace = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}_"))
        try:
            self._prepare(dist)
            log_path = Path(self.log_file) if self.log_file else self.workspace / "triton.log"
            self._log_path = log_path
            with open(log_path, "ab") as log:
                self.process = subprocess.Popen(self._command(dist), stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self._env(dist),
                                                start_new_session=True, preexec_fn=_die_with_parent)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 15) -> str:
        """Triton's error lines (a model that failed to load says why there), else its last lines."""
        try:
            text = Path(self._log_path).read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return ""
        errors = [line for line in text if re.match(r"E\d{4} ", line) and "CudaDriverHelper" not in line]
        return "\n".join(errors[-lines:] if errors else text[-lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def model_ready(self, name: str) -> bool:
        return _get(f"{self.http_url}/v2/models/{name}/ready") == 200

    def wait_ready(self, timeout: float) -> None:
        """Until the server and every model report ready; ``ServerError`` with the end of Triton's
        log if it exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise ServerError(f"tritonserver exited (code {self.process.returncode}) before it was ready; "
                                  f"its log says:\n{self.log_tail()}")
            if _get(f"{self.http_url}/v2/health/ready") == 200 and all(self.model_ready(m) for m in self.models):
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s; the end of its log:\n{self.log_tail()}")

    def reload(self, name: str, timeout: float = 120.0) -> None:
        """Load ``name`` again (explicit model control): its instances are restarted."""
        req = urllib.request.Request(f"{self.http_url}/v2/repository/models/{name}/load", data=b"{}",
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            raise ServerError(f"reloading {name} failed: {e.read().decode(errors='replace')[:500]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerError(f"reloading {name} failed: {e}") from None

    def statistics(self, name: str) -> dict:
        """Triton's statistics of model ``name`` (``inference_count``, ``execution_count``, ...)."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{name}/stats", timeout=10) as r:
            return json.loads(r.read())["model_stats"][0]

    def stop(self) -> None:
        """SIGTERM (Triton unloads its models and ends the stubs), SIGKILL of the whole process group
        after ``exit_timeout`` + 10 s; then this server's ``/dev/shm`` regions and workspace go."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=self.exit_timeout + 10)
                except subprocess.TimeoutExpired:
                    pass
            try:  # stubs left behind by a crash share the group
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        for region in SHM_DIR.glob(f"{self.shm_prefix}*") if SHM_DIR.is_dir() else ():
            try:
                region.unlink()
            except OSError:
                pass
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()
