"""``hieramamba serve`` (Triton Inference Server on a bundle) and ``hieramamba triton-repo`` (a model
repository for a stock Triton container). docs/serving.md."""

from __future__ import annotations

import signal
import sys
import threading
import time

from hieramamba.errors import InputError

from .common import add_text_overflow, non_negative_int, positive_float, positive_int

EXIT_UNHEALTHY = 3  # the canary failed and a reload did not bring the model back


def _options(args):
    from hieramamba.serving.repository import ServeOptions

    gpus = None
    if getattr(args, "gpus", None):
        try:
            gpus = tuple(int(g) for g in args.gpus.split(","))
        except ValueError:
            raise InputError(f"--gpus expects comma-separated GPU ids, got {args.gpus!r}") from None
    if args.backend != "tensorrt" and gpus is not None:
        raise InputError("--gpus is an option of --backend tensorrt")
    if args.backend == "tensorrt" and args.threads:
        raise InputError("--threads is an option of --backend onnxruntime")
    return ServeOptions(backend=args.backend, instances=args.instances, gpus=gpus, threads=args.threads,
                        features=args.features, video_cache=args.video_cache, max_batch=args.max_batch,
                        max_queue_delay_us=args.max_queue_delay_us, video_dtype=args.video_dtype, chunk=args.chunk,
                        text_overflow=args.text_overflow)


class Canary:
    """One small inference per served model: the liveness check that readiness is not (a killed
    instance left Triton ready while every request failed). Zeros are valid features."""

    def __init__(self, server, plan, options):
        import numpy as np

        from hieramamba.serving.adapter import GROUND_MODEL, QUERY_MODEL, VideoStore
        from hieramamba.serving.client import GroundingClient, ground_tensors

        self.client = GroundingClient(server.http_url, timeout=60.0)
        video = np.zeros((plan.pad_multiple, plan.vid_in_dim), np.float32)
        query = np.zeros((1, plan.text_in_dim), np.float32)
        self.requests = {GROUND_MODEL: ground_tensors(video, [query], fps=30.0, video_dtype=options.video_dtype)}
        if options.features:
            vid = VideoStore(options.features).any_id()
            self.requests[QUERY_MODEL] = {"VIDEO_ID": np.array([[vid.encode()]], dtype=object),
                                          "QUERY_FEATURES": query[None], "FPS": np.array([[30.0]], np.float32)}

    def failures(self) -> dict:
        """``{model: message}`` of the models whose canary failed."""
        out = {}
        for model, tensors in self.requests.items():
            try:
                self.client.infer(model, tensors)
            except Exception as exc:  # noqa: BLE001 — any failure means not alive
                out[model] = str(exc).splitlines()[0][:300]
        return out


def _say(line: str) -> None:
    print(f"[serve {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def cmd_serve(args) -> int:
    from hieramamba.serving.repository import check_serving
    from hieramamba.serving.server import TritonServer

    options = _options(args)
    manifest = check_serving(args.bundle, options)  # every refusal before the server starts
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _say(f"binding to {args.host}: reachable from other hosts (no authentication)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer.for_bundle(args.bundle, options, host=args.host, http_port=args.http_port,
                                     grpc_port=args.grpc_port, metrics_port=args.metrics_port, log_file=args.log)
    try:
        _say(f"starting Triton on {args.bundle} ({manifest.dtype}, {options.backend}, "
             f"{options.instances} instance(s) per model)")
        server.start(timeout=args.start_timeout)
        canary = Canary(server, manifest.plan, options)
        failed = canary.failures()
        if failed:
            _say(f"canary failed after start: {failed}")
            return EXIT_UNHEALTHY
        _say(f"ready: {', '.join(server.models)} at {server.http_url} (gRPC {server.grpc_url}, "
             f"metrics {server.metrics_url})")
        while not stop.wait(args.canary_interval):
            if not server.running():
                _say(f"tritonserver exited (code {server.process.returncode}); the end of its log:\n"
                     f"{server.log_tail()}")
                return EXIT_UNHEALTHY
            failed = canary.failures()
            for model, message in failed.items():
                _say(f"canary: {model} failed ({message}); reloading it")
                try:
                    server.reload(model)
                except Exception as exc:  # noqa: BLE001
                    _say(f"reload of {model} failed: {exc}")
            if failed:
                still = canary.failures()
                if still:
                    _say(f"canary still failing after reload: {still}; stopping")
                    return EXIT_UNHEALTHY
                _say(f"canary: {', '.join(failed)} healthy again")
        _say("stopping")
        return 0
    finally:
        server.stop()


def cmd_triton_repo(args) -> int:
    from pathlib import Path

    from hieramamba.artifacts import check_output_folder
    from hieramamba.serving.repository import write_repository

    out = check_output_folder(args.out, "--out")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} is not empty; choose a new folder")
    options = _options(args)
    models = write_repository(args.bundle, out, options, copy_bundle=args.copy_bundle)
    where = "copied into it" if args.copy_bundle else f"at {Path(args.bundle).resolve()}"
    print(f"wrote {', '.join(models)} to {Path(out)} (bundle {where}, {options.backend}); "
          f"start it with: tritonserver --model-repository={Path(out).resolve()}")
    return 0


def _common(p) -> None:
    from hieramamba.runtime.scheduler import DEFAULT_CHUNK, WHOLE_LEVEL_TOKENS

    p.add_argument("--bundle", required=True, help="export bundle (hieramamba export-bundle)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                   help="onnxruntime (CPU) or tensorrt (the bundle's engines from build-engines, one per GPU "
                        "instance; needs a GPU and TensorRT)")
    p.add_argument("--instances", type=positive_int, default=1,
                   help="instances per model (CPU: processes; tensorrt: per GPU); default 1")
    p.add_argument("--gpus", help="--backend tensorrt: comma-separated GPU ids (default: all)")
    p.add_argument("--threads", type=positive_int, help="ONNX Runtime threads per instance (default: ORT's)")
    p.add_argument("--features", help="folder of <video_id>.npy video features: also serve hieramamba_ground_query "
                                      "(one query per request, dynamic batching; needs a per_sample bundle)")
    p.add_argument("--video-cache", type=positive_int, default=64,
                   help="hieramamba_ground_query: videos kept memory-mapped per instance (default 64)")
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="hieramamba_ground_query: most requests per dynamic batch (default 16)")
    p.add_argument("--max-queue-delay-us", type=non_negative_int, default=2000,
                   help="hieramamba_ground_query: how long a request may wait for others (default 2000 µs)")
    p.add_argument("--chunk", type=positive_int, help="level tokens per chunk (default: the runtime's, whole levels "
                   f"up to {WHOLE_LEVEL_TOKENS} level-0 tokens, else {DEFAULT_CHUNK}; tensorrt: the engines')")
    add_text_overflow(p)
    p.add_argument("--video-dtype", default="float32", choices=["float32", "float16"],
                   help="type of VIDEO_FEATURES on the wire (float16 halves it)")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a bundle on Triton Inference Server (HTTP/gRPC, metrics)")
    _common(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this host only)")
    p.add_argument("--http-port", type=positive_int, default=8000)
    p.add_argument("--grpc-port", type=positive_int, default=8001)
    p.add_argument("--metrics-port", type=positive_int, default=8002)
    p.add_argument("--canary-interval", type=positive_float, default=10.0,
                   help="seconds between liveness inferences (default 10)")
    p.add_argument("--start-timeout", type=positive_float, default=180.0,
                   help="seconds to wait for every model to load (default 180)")
    p.add_argument("--log", help="append Triton's log to this file (default: a file removed at exit)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("triton-repo", help="write a Triton model repository for a bundle (stock Triton container)")
    _common(p)
    p.add_argument("--out", required=True, help="new folder for the repository")
    p.add_argument("--copy-bundle", action="store_true",
                   help="copy the bundle into the repository (REPO/hieramamba_ground/bundle): one folder to mount into a "
                        "container; "
                        "otherwise the models name the bundle's absolute path here")
    p.set_defaults(func=cmd_triton_repo)
