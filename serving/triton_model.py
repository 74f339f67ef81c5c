"""The Triton python-backend model behind both served models. A model repository's ``model.py``
(``serving/repository.py`` writes it) is one line that imports :class:`TritonPythonModel` from
here; its ``config.pbtxt`` parameters say which model it is and what it opens:

* ``hieramamba_model``: ``hieramamba_ground`` or ``hieramamba_ground_query``
* ``bundle``: the export bundle's folder (verified when opened)
* ``backend``: ``onnxruntime`` (CPU) or ``tensorrt`` (the bundle's engines, on the instance's GPU)
* ``threads``: ONNX Runtime intra-op threads per instance (``0``: ORT's default)
* ``chunk`` (``0``: the runtime's default) and ``text_overflow`` (``error``/``truncate``): as
  ``GroundingRuntime.load`` takes them
* ``features`` / ``video_cache``: ``hieramamba_ground_query``'s feature folder and how many videos
  stay memory-mapped

Each instance (a separate stub process) opens the bundle once in ``initialize``. A request's input
mistake becomes an ``INVALID_ARG`` error (HTTP 400) carrying the pipeline's one-line message; any
other failure is an ``INTERNAL`` error naming the exception, with the traceback in Triton's log.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from hieramamba.errors import InputError

from .adapter import (GROUND_INPUTS, GROUND_MODEL, QUERY_INPUTS, QUERY_MODEL, VideoStore, check_query_model_bundle,
                      ground_query_requests, ground_request)


REQUESTS_METRIC = "hieramamba_requests"
OUTCOMES = ("success", "invalid_argument", "error")


def _parameters(model_config: dict) -> dict:
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def open_pipeline(params: dict, repository: str = ".", device_id: int = 0):
    """The grounding runtime an instance serves, from its ``config.pbtxt`` parameters (a relative
    ``bundle`` is relative to the repository: ``triton-repo --copy-bundle``)."""
    from hieramamba.runtime import GroundingRuntime

    bundle = Path(repository) / params["bundle"]
    backend = params.get("backend", "onnxruntime")
    kwargs = {"text_overflow": params.get("text_overflow") or "error"}
    if int(params.get("chunk") or 0):
        kwargs["chunk"] = int(params["chunk"])
    if backend == "tensorrt":
        return GroundingRuntime.load(bundle, backend="tensorrt", device=f"cuda:{device_id}", **kwargs)
    if backend != "onnxruntime":
        raise InputError(f"parameter backend must be onnxruntime or tensorrt, got {backend!r}")
    threads = int(params.get("threads") or 0) or None
    return GroundingRuntime.load(bundle, backend="onnxruntime", threads=threads, **kwargs)


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.kind = params.get("hieramamba_model", GROUND_MODEL)
        if self.kind not in (GROUND_MODEL, QUERY_MODEL):
            raise InputError(f"parameter hieramamba_model must be {GROUND_MODEL} or {QUERY_MODEL}, got {self.kind!r}")
        # args["model_repository"] is this model's folder inside the repository
        repository = Path(args.get("model_repository") or ".").parent
        self.pipeline = open_pipeline(params, repository, int(args.get("model_instance_device_id") or 0))
        if self.kind == QUERY_MODEL:
            check_query_model_bundle(self.pipeline.plan, f"bundle {params['bundle']}")
            self.videos = VideoStore(params["features"], int(params.get("video_cache") or 64))
        specs = GROUND_INPUTS if self.kind == GROUND_MODEL else QUERY_INPUTS
        self.input_names = [s.name for s in specs]
        # Triton's own counters call a request answered with an error response a success: count
        # the outcomes here (same family in every instance: Triton adds them up). The family must
        # outlive its metrics: kept on the instance.
        self.metric_family = family = pb_utils.MetricFamily(
            name=REQUESTS_METRIC, kind=pb_utils.MetricFamily.COUNTER,
            description="hieramamba requests by model and outcome (success, invalid_argument, error)")
        self.outcomes = {o: family.Metric(labels={"model": self.kind, "outcome": o}) for o in OUTCOMES}

    def _tensors(self, request, batched: bool) -> dict:
        """A request's inputs; ``batched``: the query model's, one query each (batch dimension 1),
        returned without that dimension."""
        out = {}
        for name in self.input_names:
            t = self.pb.get_input_tensor_by_name(request, name)
            if t is None:
                continue
            x = t.as_numpy()
            if batched:
                if x.ndim == 0 or x.shape[0] != 1:
                    raise InputError(f"{QUERY_MODEL} takes one query per request: {name} has batch dimension "
                                     f"{x.shape[0] if x.ndim else 'none'}, expected 1")
                x = x[0]
            out[name] = x
        return out

    def _response(self, outputs, batched: bool):
        pb = self.pb
        if isinstance(outputs, InputError):
            self.outcomes["invalid_argument"].increment(1)
            return pb.InferenceResponse(error=pb.TritonError(str(outputs), pb.TritonError.INVALID_ARG))
        if isinstance(outputs, BaseException):
            self.outcomes["error"].increment(1)
            return pb.InferenceResponse(error=pb.TritonError(f"{type(outputs).__name__}: {outputs}"))
        self.outcomes["success"].increment(1)
        tensors = [pb.Tensor(name, value[None] if batched else value) for name, value in outputs.items()]
        return pb.InferenceResponse(output_tensors=tensors)

    def _failed(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, InputError):
            self.logger.log_error(f"{self.kind}: {''.join(traceback.format_exception(exc))}")
        return exc

    def execute(self, requests):
        if self.kind == GROUND_MODEL:
            responses = []
            for request in requests:
                try:
                    outputs = ground_request(self.pipeline, self._tensors(request, batched=False))
                except Exception as exc:  # noqa: BLE001 — every request gets an answer
                    outputs = self._failed(exc)
                responses.append(self._response(outputs, batched=False))
            return responses
        rows = []
        for request in requests:
            try:
                rows.append(self._tensors(request, batched=True))
            except Exception as exc:  # noqa: BLE001
                rows.append(exc)
        good = [i for i, r in enumerate(rows) if isinstance(r, dict)]
        try:
            answers = ground_query_requests(self.pipeline, [rows[i] for i in good], self.videos)
        except Exception as exc:  # noqa: BLE001
            answers = [self._failed(exc)] * len(good)
        for i, answer in zip(good, answers):
            rows[i] = answer
        return [self._response(r, batched=True) for r in rows]

    def finalize(self):
        self.pipeline = None
        self.outcomes = None  # metrics before their family
        self.metric_family = None
