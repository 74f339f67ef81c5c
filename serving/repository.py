"""A Triton model repository for a bundle (``hieramamba triton-repo``; ``hieramamba serve`` writes
one into its workspace and starts Triton on it): per model a ``config.pbtxt`` with the dims of the
bundle's plan and a one-line ``1/model.py`` for the python backend that imports
``hieramamba.serving.triton_model`` — so the package must be installed in the Python the server's
python backend runs (docs/serving.md).

    <repo>/hieramamba_ground/config.pbtxt
    <repo>/hieramamba_ground/1/model.py
    <repo>/hieramamba_ground/bundle/        (``--copy-bundle``: the repository is one folder to mount)
    <repo>/hieramamba_ground_query/...      (with a features folder only)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hieramamba.artifacts import BundleManifest, temp_sibling, write_atomic
from hieramamba.errors import InputError

from .adapter import (GROUND_INPUTS, GROUND_MODEL, GROUND_OUTPUTS, QUERY_INPUTS, QUERY_MODEL, QUERY_OUTPUTS,
                      VIDEO_DTYPES, VideoStore, check_query_model_bundle, resolve_dims)

MODEL_PY = '''"""Triton python-backend model: hieramamba's grounding pipeline (written by hieramamba)."""
from hieramamba.serving.triton_model import TritonPythonModel  # noqa: F401
'''

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "bytes": "TYPE_STRING"}
BACKENDS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class ServeOptions:
    """What a repository serves. ``instances``: instances per model (CPU: processes; GPU: per
    GPU); ``gpus``: the GPU ids for ``tensorrt`` (None: all); ``threads``: ONNX Runtime threads per
    instance (None: ORT's default); ``features``: the folder ``hieramamba_ground_query`` reads
    videos from (None: that model is not served); ``max_batch``/``max_queue_delay_us``: its
    dynamic batching; ``video_dtype``: the type clients send ``VIDEO_FEATURES`` in; ``chunk``: level
    tokens per chunk (None: the runtime's); ``text_overflow``: a query longer than
    ``eval.max_text_len`` is refused (``error``) or cut (``truncate``)."""

    backend: str = "onnxruntime"
    instances: int = 1
    gpus: Optional[tuple] = None
    threads: Optional[int] = None
    features: Optional[str] = None
    video_cache: int = 64
    max_batch: int = 16
    max_queue_delay_us: int = 2000
    video_dtype: str = "float32"
    chunk: Optional[int] = None
    text_overflow: str = "error"

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.video_dtype not in VIDEO_DTYPES:
            raise InputError(f"--video-dtype must be float32 or float16, got {self.video_dtype!r}")
        for name in ("instances", "max_batch", "video_cache"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.text_overflow not in ("error", "truncate"):
            raise InputError(f"--text-overflow must be error or truncate, got {self.text_overflow!r}")
        if self.chunk is not None and self.chunk < 1:
            raise InputError(f"--chunk must be at least 1, got {self.chunk}")
        if self.max_queue_delay_us < 0:
            raise InputError(f"--max-queue-delay-us must be ≥ 0, got {self.max_queue_delay_us}")


def _quote(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(spec, plan, video_dtype: str) -> str:
    dtype = video_dtype if spec.name == "VIDEO_FEATURES" else spec.dtype
    dims = ", ".join(str(d) for d in resolve_dims(spec, plan))
    lines = [f"    name: {_quote(spec.name)}", f"    data_type: {TRITON_TYPES[dtype]}", f"    dims: [ {dims} ]"]
    if spec.optional:
        lines.append("    optional: true")
    if spec.ragged:
        lines.append("    allow_ragged_batch: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config(name: str, plan, bundle: Path, options: ServeOptions) -> str:
    """The ``config.pbtxt`` text of model ``name`` (protobuf text format)."""
    query = name == QUERY_MODEL
    inputs, outputs = (QUERY_INPUTS, QUERY_OUTPUTS) if query else (GROUND_INPUTS, GROUND_OUTPUTS)
    params = {"hieramamba_model": name, "bundle": str(bundle), "backend": options.backend,
              "threads": str(options.threads or 0), "chunk": str(options.chunk or 0),
              "text_overflow": options.text_overflow}
    if query:
        params.update(features=str(Path(options.features).resolve()), video_cache=str(options.video_cache))
    if options.backend == "tensorrt":
        gpus = "" if options.gpus is None else f"\n    gpus: [ {', '.join(str(g) for g in options.gpus)} ]"
        group = f"  {{\n    count: {options.instances}\n    kind: KIND_GPU{gpus}\n  }}"
    else:
        group = f"  {{\n    count: {options.instances}\n    kind: KIND_CPU\n  }}"
    parts = [
        f"name: {_quote(name)}",
        'backend: "python"',
        f"max_batch_size: {options.max_batch if query else 0}",
        "input [\n" + ",\n".join(_tensor_block(s, plan, options.video_dtype) for s in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(s, plan, options.video_dtype) for s in outputs) + "\n]",
        "instance_group [\n" + group + "\n]",
    ]
    if query:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    parts += [f"parameters {{\n  key: {_quote(k)}\n  value: {{ string_value: {_quote(v)} }}\n}}"
              for k, v in params.items()]
    return "\n".join(parts) + "\n"


def served_models(options: ServeOptions) -> tuple:
    return (GROUND_MODEL, QUERY_MODEL) if options.features else (GROUND_MODEL,)


def check_serving(bundle, options: ServeOptions):
    """Everything a server would refuse at load, before it starts: the options, the bundle
    (manifest and every stage file verified), the features folder, and the query model's need for
    a ``per_sample`` bundle. Returns the bundle's manifest."""
    options.check()
    if options.backend == "tensorrt":  # each GPU instance opens <bundle>/trt: TensorRT must be here
        from hieramamba.trt_env import import_tensorrt

        import_tensorrt()
    manifest = BundleManifest.read(bundle)
    manifest.verify_stage_files(bundle)
    if options.features:
        VideoStore(options.features).any_id()
        check_query_model_bundle(manifest.plan, f"--bundle {bundle}")
    return manifest


def write_repository(bundle, out, options: ServeOptions, copy_bundle: bool = False) -> list:
    """Write the model repository for ``bundle`` into the folder ``out`` (created; its parent must
    exist). With ``copy_bundle`` the bundle is copied to ``out/hieramamba_ground/bundle`` and the models name it
    relative to the repository (one folder to mount anywhere); otherwise by its absolute path.
    Returns the served model names."""
    bundle = Path(bundle).resolve()
    manifest = check_serving(bundle, options)
    out = Path(out)
    out.mkdir(parents=False, exist_ok=True)
    named = bundle
    names = served_models(options)
    if copy_bundle:  # inside a model's folder: Triton takes every folder at the top for a model
        named = Path(GROUND_MODEL) / "bundle"  # resolved against the repository by the model
        (out / GROUND_MODEL).mkdir(exist_ok=True)
        tmp = temp_sibling(out / named, folder=True)
        tmp.rmdir()
        shutil.copytree(bundle, tmp)
        os.replace(tmp, out / named)
    for name in names:
        version = out / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        write_atomic(out / name / "config.pbtxt", model_config(name, manifest.plan, named, options).encode())
        write_atomic(version / "model.py", MODEL_PY.encode())
    return list(names)
