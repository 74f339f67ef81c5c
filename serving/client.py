"""Client side of the served models (``hieramamba ground --server URL``, the serve canary, the
tests): ``tritonclient`` over HTTP (``http://host:port``) or gRPC (``grpc://host:port``).
A 400 answer (``INVALID_ARG``) comes back as ``InputError`` with the server's message."""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlparse

import numpy as np

from hieramamba.errors import BackendUnavailableError, HieraMambaError, InputError

from .adapter import GROUND_MODEL, QUERY_MODEL, unpack_segments


class ServerRequestError(HieraMambaError):
    """The server failed a request for a reason other than its input."""


def _split(url: str):
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "grpc") or not parsed.hostname or not parsed.port:
        raise InputError(f"--server {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return parsed.scheme, f"{host}:{parsed.port}"


class GroundingClient:
    """Requests to a server's ``hieramamba_ground`` / ``hieramamba_ground_query`` models."""

    def __init__(self, url: str, timeout: float = 300.0):
        self.url = url
        self.scheme, self.address = _split(url)
        self.timeout = timeout
        try:
            if self.scheme == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
        except ImportError:
            raise BackendUnavailableError("a Triton client needs tritonclient: pip install 'hieramamba[serve]'") \
                from None
        self._tc = tc
        if self.scheme == "grpc":
            self._client = tc.InferenceServerClient(self.address)
        else:
            self._client = tc.InferenceServerClient(self.address, connection_timeout=timeout,
                                                    network_timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _input(self, name: str, array: np.ndarray):
        dtype = "BYTES" if array.dtype == object else {"float32": "FP32", "float16": "FP16",
                                                       "int32": "INT32"}[array.dtype.name]
        t = self._tc.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    def infer(self, model: str, tensors: dict) -> dict:
        """Raw request: named arrays in, named arrays out."""
        inputs = [self._input(n, a) for n, a in tensors.items()]
        outputs = [self._tc.InferRequestedOutput(n) for n in ("SEGMENTS", "SCORES", "NUM_SEGMENTS")]
        try:
            if self.scheme == "grpc":
                result = self._client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout)
            else:
                result = self._client.infer(model, inputs, outputs=outputs)
        except self._tc_exception() as exc:
            raise _error(exc, self.url) from None
        except OSError as exc:  # HTTP: refused, reset, unreachable
            raise ServerRequestError(f"cannot reach the server at {self.url}: {exc.strerror or exc}") from None
        return {n: result.as_numpy(n) for n in ("SEGMENTS", "SCORES", "NUM_SEGMENTS")}

    def _tc_exception(self):
        from tritonclient.utils import InferenceServerException

        return InferenceServerException

    def ground(self, video: np.ndarray, queries: list, fps: float, duration: Optional[float] = None,
               clip_size: Optional[float] = None, clip_stride: Optional[float] = None,
               video_dtype: str = "float32", model: str = GROUND_MODEL) -> list:
        """One video and its queries → per query ``[(start_sec, end_sec, score), ...]``, ranked."""
        tensors = ground_tensors(video, queries, fps, duration, clip_size, clip_stride, video_dtype)
        return unpack_segments(self.infer(model, tensors))

    def ground_query(self, video_id: str, query: np.ndarray, fps: float, duration: Optional[float] = None,
                     model: str = QUERY_MODEL) -> list:
        """One query of a server-side video → ``[(start_sec, end_sec, score), ...]``, ranked."""
        tensors = {"VIDEO_ID": np.array([[video_id.encode()]], dtype=object),
                   "QUERY_FEATURES": np.ascontiguousarray(np.asarray(query, np.float32)[None]),
                   "FPS": np.array([[fps]], np.float32)}
        if duration is not None:
            tensors["DURATION"] = np.array([[duration]], np.float32)
        out = self.infer(model, tensors)  # a batch of one: SEGMENTS (1, K, 2), NUM_SEGMENTS (1, 1)
        return unpack_segments(dict(out, NUM_SEGMENTS=out["NUM_SEGMENTS"].reshape(-1)))[0]


def ground_tensors(video, queries, fps, duration=None, clip_size=None, clip_stride=None,
                   video_dtype: str = "float32") -> dict:
    """The ``hieramamba_ground`` request tensors of one video and its queries (padded)."""
    queries = [np.asarray(q, np.float32) for q in queries]
    if not queries or any(q.ndim != 2 for q in queries):
        raise InputError("queries: expected a non-empty list of (num_tokens, dim) arrays")
    longest = max(q.shape[0] for q in queries)
    padded = np.zeros((len(queries), longest, queries[0].shape[1]), np.float32)
    for i, q in enumerate(queries):
        if q.shape[1] != padded.shape[2]:
            raise InputError(f"query {i}: feature dim {q.shape[1]}, query 0 has {padded.shape[2]}")
        padded[i, : q.shape[0]] = q
    tensors = {"VIDEO_FEATURES": np.ascontiguousarray(np.asarray(video, dtype=video_dtype)),
               "QUERY_FEATURES": padded, "QUERY_LENGTHS": np.array([q.shape[0] for q in queries], np.int32),
               "FPS": np.array([fps], np.float32)}
    for name, value in (("DURATION", duration), ("CLIP_SIZE", clip_size), ("CLIP_STRIDE", clip_stride)):
        if value is not None:
            tensors[name] = np.array([value], np.float32)
    return tensors


def _error(exc, url: str) -> HieraMambaError:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InputError(f"the server refused the request: {message}")
    if status == "StatusCode.UNAVAILABLE":
        return ServerRequestError(f"cannot reach the server at {url}: {message}")
    return ServerRequestError(f"the server failed the request ({status or 'no status'}): {message}")
