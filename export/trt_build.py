"""TensorRT engine building from an exported ONNX file (TensorRT 10 Python API).

Everything except the calls into TensorRT is plain code (profile computation, argument checks,
plugin lookup, the engine manifest) and is unit-tested without TensorRT. ``build_engine`` imports
``tensorrt`` lazily and raises BackendUnavailableError when it (or the plugin library) is absent.

Engine = ``<name>.engine`` + ``<name>.engine.json`` (schema ``hieramamba.engine_file``: the ONNX
manifest's config/dtype/mask semantics, the profile, TensorRT version, plugin library + version,
GPU name). Per-stage engines of a bundle: ``build_bundle_engines`` writes an engines folder
(``hieramamba.artifacts.EnginesManifest``) with profiles from ``hieramamba.stage_table``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from hieramamba.artifacts import (SCAN_OP, BundleManifest, EngineLimits, EnginesManifest, StageFile,
                                  bundle_fingerprint, file_sha256, temp_sibling, write_artifact, write_atomic)
from hieramamba.errors import ExportError
from hieramamba.stage_table import index_ranges, profile_shapes, stage_instances
from hieramamba.trt_env import gpu_info, import_tensorrt, load_scan_plugin

from .manifest import load_manifest

ENGINE_SCHEMA, ENGINE_VERSION = "hieramamba.engine_file", 2


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile: video length ``T`` and query batch ``Nq`` ranges; text length
    is fixed per profile range ``text_min..text_max`` (opt = text_opt)."""
    len_min: int
    len_opt: int
    len_max: int
    q_min: int
    q_opt: int
    q_max: int
    text_min: int
    text_opt: int
    text_max: int

    def validate(self) -> "ProfileSpec":
        for what, lo, opt, hi in (("video length", self.len_min, self.len_opt, self.len_max),
                                  ("query batch", self.q_min, self.q_opt, self.q_max),
                                  ("text length", self.text_min, self.text_opt, self.text_max)):
            for v in (lo, opt, hi):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ExportError(f"profile {what}: values must be ints, got {v!r}")
            if not 1 <= lo <= opt <= hi:
                raise ExportError(f"profile {what}: need 1 <= min <= opt <= max, got "
                                  f"min={lo}, opt={opt}, max={hi}")
        return self

    def shapes(self, vid_dim: int, text_dim: int) -> dict:
        """``{input name: (min, opt, max) shapes}`` for the whole-model graph's inputs."""
        self.validate()
        T = (self.len_min, self.len_opt, self.len_max)
        Q = (self.q_min, self.q_opt, self.q_max)
        Tt = (self.text_min, self.text_opt, self.text_max)
        return {
            "video": tuple((1, vid_dim, t) for t in T),
            "video_mask": tuple((1, 1, t) for t in T),
            "text": tuple((q, text_dim, tt) for q, tt in zip(Q, Tt)),
            "text_mask": tuple((q, 1, tt) for q, tt in zip(Q, Tt)),
        }


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """``"min:opt:max"`` or a single ``"n"`` (fixed) → three ints."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        raise ExportError(f"{what}: expected MIN:OPT:MAX or N (integers), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise ExportError(f"{what}: expected MIN:OPT:MAX or N, got {text!r}")
    return tuple(parts)


def profile_from_args(lengths: str, queries: str, text: str) -> ProfileSpec:
    return ProfileSpec(*parse_range(lengths, "--lengths"), *parse_range(queries, "--queries"),
                       *parse_range(text, "--text-len")).validate()


def input_dims_from_manifest(manifest: dict) -> tuple[int, int]:
    """Static channel dims of ``video`` and ``text`` from the manifest's input shapes."""
    shapes = {i["name"]: i["shape"] for i in manifest["inputs"]}
    try:
        vd, td = shapes["video"][1], shapes["text"][1]
    except (KeyError, IndexError):
        raise ExportError("build-engine needs a whole-model graph with inputs video, video_mask, "
                          f"text, text_mask; manifest lists {sorted(shapes)}") from None
    if not isinstance(vd, int) or not isinstance(td, int):
        raise ExportError(f"video/text channel dims must be static, got {vd}, {td}")
    return vd, td


def engine_manifest(onnx_manifest: dict, onnx_path, engine_path, profile: ProfileSpec, *,
                    trt_version: str, plugin_library: Optional[str], gpu: Optional[str],
                    timing_cache: Optional[str]) -> dict:
    return {
        "engine": Path(engine_path).name,
        "engine_sha256": file_sha256(engine_path) if Path(engine_path).is_file() else None,
        "onnx": Path(onnx_path).name,
        "onnx_sha256": onnx_manifest.get("sha256"),
        "dtype": onnx_manifest.get("dtype"),
        "mask_semantics": onnx_manifest.get("mask_semantics"),
        "config": onnx_manifest.get("config"),
        "padding": onnx_manifest.get("padding"),
        "inputs": onnx_manifest.get("inputs"),
        "outputs": onnx_manifest.get("outputs"),
        "profile": asdict(profile),
        "tensorrt_version": trt_version,
        "plugin": plugin_identity(plugin_library),
        "gpu": gpu,
        "timing_cache": timing_cache,
        "strongly_typed": True,
    }


def plugin_identity(library: Optional[str]) -> dict:
    return {"library": library, "name": SCAN_OP.op_type, "version": SCAN_OP.version, "namespace": SCAN_OP.domain}


def build_engine(onnx_path, engine_path, profile: ProfileSpec, *, plugin_library=None,
                 timing_cache=None, workspace_gib: float = 8.0) -> dict:
    """Build a strongly typed engine from ``onnx_path`` (manifest validated first). Returns the
    engine manifest (also written to ``<engine_path>.json``)."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    man = load_manifest(onnx_path)
    vd, td = input_dims_from_manifest(man)
    shapes = profile.shapes(vd, td)
    if workspace_gib <= 0:
        raise ExportError(f"--workspace-gib must be positive, got {workspace_gib}")
    trt = import_tensorrt()
    lib = load_scan_plugin(trt, plugin_library) if man["hydra_scan"]["custom_nodes"] > 0 else None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache = _timing_cache(builder, timing_cache)
    serialized = serialize_network(trt, builder, logger, onnx_path, lambda inp: shapes.get(inp.name),
                                   workspace_gib, cache, scan_nodes=man["hydra_scan"]["custom_nodes"])
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(engine_path, bytes(serialized))
    if cache is not None:
        write_atomic(timing_cache, bytes(cache.serialize()))
    em = engine_manifest(man, onnx_path, engine_path, profile, trt_version=trt.__version__,
                         plugin_library=str(lib) if lib else None, gpu=gpu_info()["name"],
                         timing_cache=str(timing_cache) if timing_cache else None)
    write_artifact(str(engine_path) + ".json", ENGINE_SCHEMA, ENGINE_VERSION, em)
    return em


def _timing_cache(builder, path, log=None):
    """One timing cache for the builds of a session, read from ``path`` when it exists. TensorRT
    refuses (``set_timing_cache`` returns False) a cache made on another GPU or TensorRT version:
    then a fresh one is used, and written back, and ``log`` is told."""
    if not path:
        return None
    config = builder.create_builder_config()
    blob = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(blob)
    if blob and not config.set_timing_cache(cache, ignore_mismatch=False):
        (log or print)(f"warning: timing cache {path} was made on another GPU or TensorRT version and is "
                       "not used; starting a fresh one")
        cache = config.create_timing_cache(b"")
    return cache


def serialize_network(trt, builder, logger, onnx_path, profile_for, workspace_gib, cache=None,
                      scan_nodes: int = 0, log=None):
    """Parse ``onnx_path`` into a strongly typed network and build it with one optimization
    profile: ``profile_for(network input)`` gives ``(min, opt, max)`` shapes, or for a shape
    tensor input its value ranges (``None``: the input is static). Returns the serialized
    engine; raises ExportError naming the file when TensorRT cannot parse or build it.
    ``scan_nodes``: HydraScan nodes in the file; fewer plugin layers after parsing means this
    TensorRT built them from their ONNX function body (correct, slower), which ``log`` is told."""
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errs}")
    plugin_layers = sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers))
    if plugin_layers < scan_nodes:
        (log or print)(f"warning: {Path(onnx_path).name}: TensorRT {trt.__version__} made {plugin_layers} of "
                       f"{scan_nodes} HydraScan nodes plugin layers; the others run their ONNX function "
                       "body (same results, slower; TensorRT >= 10.7 picks the registered plugin)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        ranges = profile_for(inp)
        if ranges is None:
            if any(d < 0 for d in inp.shape):
                raise ExportError(f"{onnx_path}: no profile for dynamic input {inp.name} {tuple(inp.shape)}")
            continue
        if inp.is_shape_tensor:
            opt_profile.set_shape_input(inp.name, *ranges)
        else:
            opt_profile.set_shape(inp.name, *ranges)
    if config.add_optimization_profile(opt_profile) < 0:
        shapes = {network.get_input(i).name: profile_for(network.get_input(i)) for i in range(network.num_inputs)}
        raise ExportError(f"{onnx_path}: TensorRT rejected the optimization profile (each input needs min ≤ opt "
                          f"≤ max of one rank): {shapes}")
    if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError(f"TensorRT refused the timing cache while building {onnx_path}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return serialized


def bundle_profiles(bundle_dir, limits: EngineLimits) -> dict:
    """Per stage instance of a bundle: ``{"shapes": {input: (min, opt, max)}, "values": {input:
    (min, opt, max)}}`` at ``limits`` (``hieramamba.stage_table.profile_shapes`` /
    ``index_ranges``: the largest windows the scheduler asks for)."""
    plan = BundleManifest.read(bundle_dir).plan
    if plan.batchify and limits.max_text_len < plan.max_text_len:
        raise ExportError(f"max_text_len {limits.max_text_len} < {plan.max_text_len}, the length "
                          "every query is padded to (eval.max_text_len)")
    # shape-tensor values are lists (one value per element; these are scalars)
    return {inst.name: {"shapes": profile_shapes(plan, limits, inst),
                        "values": {k: tuple([x] for x in v) for k, v in index_ranges(plan, limits, inst).items()}}
            for inst in stage_instances(plan)}


def build_bundle_engines(bundle_dir, limits: EngineLimits, out_dir=None, *, plugin_library=None,
                         workspace_gib: float = 8.0, progress: bool = True, log=None) -> Path:
    """One TensorRT engine per stage of a runtime bundle, for ``limits``
    (``hieramamba.artifacts.EngineLimits``), into ``out_dir`` (default ``<bundle>/trt``; replaced
    atomically: a failed build leaves the previous engines, or nothing). A timing cache is
    shared by the stages and kept as ``timing.cache``. Returns the folder."""
    import shutil
    import time

    bundle_dir = Path(bundle_dir)
    man = BundleManifest.read(bundle_dir)
    if man.dtype == "bfloat16":
        raise ExportError(f"{bundle_dir}: a bfloat16 bundle is for ONNX Runtime on CPU (its Bf16Conv nodes have "
                          "no TensorRT plugin); build engines from a float16 bundle")
    man.verify_stage_files(bundle_dir)
    profiles = bundle_profiles(bundle_dir, limits)
    if workspace_gib <= 0:
        raise ExportError(f"workspace must be positive, got {workspace_gib} GiB")
    trt = import_tensorrt()
    needs_plugin = any(st.hydra_scan_nodes for st in man.stages.values())
    lib = load_scan_plugin(trt, plugin_library) if needs_plugin else None
    out = Path(out_dir) if out_dir else bundle_dir / "trt"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out, folder=True)
    log = log or (lambda line: None)
    t0 = time.perf_counter()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        old_cache = out / "timing.cache"
        cache = _timing_cache(builder, old_cache if old_cache.is_file() else tmp / "timing.cache", log)
        from tqdm import tqdm

        stages = {}
        for name in tqdm(list(man.stages), desc="engines", unit="stage", disable=not progress):
            prof, st = profiles[name], man.stages[name]
            t1 = time.perf_counter()
            blob = serialize_network(
                trt, builder, logger, bundle_dir / st.file,
                lambda inp: prof["values"].get(inp.name) if inp.is_shape_tensor else prof["shapes"].get(inp.name),
                workspace_gib, cache, scan_nodes=st.hydra_scan_nodes, log=log)
            (tmp / f"{name}.engine").write_bytes(bytes(blob))
            stages[name] = StageFile(f"{name}.engine", file_sha256(tmp / f"{name}.engine"), st.inputs, st.outputs,
                                     st.hydra_scan_nodes,
                                     profile={k: [list(s) for s in v] for k, v in prof["shapes"].items()})
            log(f"{name}: {time.perf_counter() - t1:.1f} s")
        (tmp / "timing.cache").write_bytes(bytes(cache.serialize()))
        EnginesManifest(bundle=bundle_fingerprint(bundle_dir), dtype=man.dtype, limits=limits,
                        tensorrt_version=trt.__version__, gpu=gpu_info(),
                        plugin=plugin_identity(str(lib) if lib else None), stages=stages,
                        build_seconds=round(time.perf_counter() - t0, 1)).write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
