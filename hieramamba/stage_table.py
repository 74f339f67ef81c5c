"""The stages of chunked grounding, written once (DESIGN §4). Torch-free.

The chunk scheduler (``hieramamba.runtime.scheduler``) runs the eval forward as a sequence of
*stage* calls on windows of the video. This module is the one table of those stages: their
names, whether they exist once or per pyramid level, their inputs with symbolic shapes and
their outputs. Everything else derives from it:

* the torch stage modules (``hieramamba.stage_modules``), which the exporter traces and the
  torch backend runs;
* the exporter's input names and dynamic axes (``hieramamba.export.stages``);
* the ONNX Runtime and TensorRT backends' feeds (by the names the bundle manifest records,
  checked against this table when the manifest is read);
* the TensorRT optimization profiles (``symbol_ranges``: the largest window the scheduler asks
  for at given engine limits);
* the NVTX range of each call, ``runtime.<stage>`` or ``runtime.<stage>[<level>]`` (``nvtx_name``).

A per-level stage instance is named ``<stage><level>`` (``pre3``), which is also its file name in
a bundle (``pre3.onnx``).

Shapes are written with the plan's static sizes (``Dv``, ``Dt``, ``D``, ``C``, ``E``, ``H``,
``P``, ``N``, ``G``, ``heads``, ``hd``, ``stride``) and the dynamic symbols of ``SYMBOLS``; an
entry ``"3*slots"`` is a multiple of a symbol. ``bb`` is the backbone batch: the queries for
early-fusion models, 1 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# -- window geometry of the scheduler (halos are what makes chunking exact) --------------------
FRONT_HALO = 4   # level-0 steps (8 input features at stride 2)
HEAD_HALO = 6    # level tokens
SLOT_HALO = 3    # interleaved slots = one anchor pair
# Query rows × keys per block of a global attention (per batch row, head). 2^16: its fp32
# temporaries (~5 score-sized copies) stay ~1.3 MB per batch row and head; 2^20 was 41 MB and
# 2^18 10 MB of the 10 h peak RSS of the tiny fp16 bundle (1 query), for ~200 row-block calls
# per query batch on a 10 h Ego4D video. Any value is exact.
ATTN_SCORES_PER_BLOCK = 2 ** 16


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LevelGeometry:
    """Lengths of level ``l``: tokens ``length`` (padded) of which ``valid`` are real,
    ``pairs`` anchors/pairs, ``3·pairs`` interleaved slots."""
    length: int
    valid: int

    @property
    def pairs(self) -> int:
        return ceil_div(self.length, 2)

    @property
    def valid_pairs(self) -> int:
        return ceil_div(self.valid, 2)


def level_geometry(padded_len: int, valid_len: int, vid_stride: int, num_levels: int):
    """Per level token lengths for a video padded to ``padded_len`` input features."""
    length, valid = ceil_div(padded_len, vid_stride), ceil_div(valid_len, vid_stride)
    out = []
    for _ in range(num_levels):
        out.append(LevelGeometry(length, valid))
        length, valid = ceil_div(length, 2), ceil_div(valid, 2)
    return out


def largest_attn_block(slots_max: int, attn_rows: Optional[int]) -> int:
    """Most query rows one ``gattn_rows`` call gets for levels of up to ``slots_max`` slots
    (the scheduler's blocks: ``attn_rows`` or ``ATTN_SCORES_PER_BLOCK // slots``)."""
    if attn_rows is not None:
        return min(attn_rows, slots_max)
    best = 0
    for s in range(1, slots_max + 1):
        best = max(best, min(s, max(1, ATTN_SCORES_PER_BLOCK // s)))
        if s >= ATTN_SCORES_PER_BLOCK // s:  # min(s, budget // s) only falls from here on
            break
    return best


# -- the table ---------------------------------------------------------------------------------
# Port kinds: "float" (the backend's dtype), "mask" (bool), "index" (0-d int64, a Python int
# on the host), "state" (fp32 scan state), "scale" (0-d fp32: the level's regression scale).
@dataclass(frozen=True)
class Port:
    name: str
    dims: tuple
    kind: str = "float"


@dataclass(frozen=True)
class StageSpec:
    name: str
    per_level: bool
    inputs: tuple
    outputs: tuple
    only: Optional[str] = None  # "windowed" / "global": levels whose local encoder is windowed / global
    doc: str = ""

    @property
    def input_names(self) -> tuple:
        return tuple(p.name for p in self.inputs)

    @property
    def output_names(self) -> tuple:
        return self.outputs

    def port(self, name: str) -> Port:
        return next(p for p in self.inputs if p.name == name)


# Dynamic symbols and their smallest value (what the exporter declares).
SYMBOLS = {"batch": 1, "bb": 1, "text": 1, "text1": 2, "vtime": 2, "tok": 2, "slen": 2, "slots": 1,
           "rows": 2, "htime": 2}

_TEXT_ENC = (Port("text_enc", ("batch", "C", "text1")), Port("text_enc_mask", ("batch", 1, "text1"), "mask"))
_SLOTS = (Port("fused1", ("bb", "3*slots", "D")), Port("seq_mask", ("bb", "3*slots", 1), "mask"))
SCAN_INPUTS = ("x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b")

STAGES = (
    StageSpec("text", False,
              (Port("text", ("batch", "Dt", "text")), Port("text_mask", ("batch", 1, "text"), "mask")),
              ("text_enc", "text_enc_mask"), doc="text encoder (once per query batch)"),
    StageSpec("front", False,
              (Port("video", (1, "Dv", "stride*vtime")), Port("video_mask", (1, 1, "stride*vtime"), "mask"))
              + _TEXT_ENC + (Port("pe_start", (), "index"), Port("pe_total", (), "index")),
              ("x",), doc="early fusion, embedding convs and the window's position encoding → level-0 input"),
    StageSpec("pre", True,
              (Port("tokens", ("bb", "D", "tok")), Port("mask", ("bb", 1, "tok"), "mask"),
               Port("n_valid", (), "index"), Port("slot_offset", (), "index")),
              ("seq", "seq_mask", "z") + SCAN_INPUTS,
              doc="anchor interleaving and Hydra's input projections of a window → scan inputs"),
    StageSpec("scan", True,
              (Port("x", ("bb", "slen", "H", "P")), Port("dt_f", ("bb", "slen", "H")),
               Port("dt_b", ("bb", "slen", "H")), Port("B_f", ("bb", "slen", "G", "N")),
               Port("C_f", ("bb", "slen", "G", "N")), Port("B_b", ("bb", "slen", "G", "N")),
               Port("C_b", ("bb", "slen", "G", "N")), Port("state_f0", ("bb", "H", "P", "N"), "state"),
               Port("state_b0", ("bb", "H", "P", "N"), "state"), Port("c_f_prev", ("bb", "G", "N")),
               Port("c_b_next", ("bb", "G", "N"))),
              ("y", "state_f", "state_b"),
              doc="HydraScan of a chunk with carried states and the one-step-shift boundary terms"),
    StageSpec("post", True,
              (Port("seq", ("bb", "slen", "D")), Port("seq_mask", ("bb", "slen", 1), "mask"),
               Port("y", ("bb", "slen", "H", "P")), Port("x", ("bb", "slen", "H", "P")),
               Port("z", ("bb", "slen", "E"))),
              ("fused1",), doc="Hydra's output projection, residual and gate 1"),
    StageSpec("local", True, _SLOTS, ("anchors", "tokens"), only="windowed",
              doc="windowed local encoder, gate 2, FFN and split of a window"),
    StageSpec("gattn_in", True, _SLOTS, ("q", "k", "v"), only="global",
              doc="global-attention levels: per-head q, k, v of the whole level"),
    StageSpec("gattn_rows", True,
              (Port("q", ("bb", "heads", "rows", "hd")), Port("k", ("bb", "heads", "3*slots", "hd")),
               Port("v", ("bb", "heads", "3*slots", "hd")), Port("seq_mask", ("bb", "3*slots", 1), "mask")),
              ("attn",), only="global", doc="attention of a block of query rows over all keys"),
    StageSpec("gattn_out", True, _SLOTS + (Port("attn", ("bb", "heads", "3*slots", "hd")),),
              ("anchors", "tokens"), only="global", doc="the rest of the local encoder, gate 2, FFN, split"),
    StageSpec("heads", False,
              (Port("tokens", ("bb", "D", "htime")), Port("mask", ("bb", 1, "htime"), "mask")) + _TEXT_ENC
              + (Port("level_scale", (), "scale"),),
              ("logits", "offsets"),
              doc="late fusion and the heads, one graph for every level (the level's scale is an input)"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> StageSpec:
    return _BY_NAME[name]


@dataclass(frozen=True)
class StageInstance:
    name: str          # file / engine / session name: "text", "pre3", ...
    spec: StageSpec
    level: Optional[int]


def instance_name(stage_name: str, level: Optional[int]) -> str:
    return stage_name if not _BY_NAME[stage_name].per_level else f"{stage_name}{level}"


def stage_instances(plan) -> list:
    """Every stage instance of a model with this plan, in the exporter's order."""
    out = []
    for spec in STAGES[:2]:
        out.append(StageInstance(spec.name, spec, None))
    for level in range(plan.num_levels):
        kind = "windowed" if plan.windowed[level] else "global"
        for spec in STAGES[2:-1]:
            if spec.only in (None, kind):
                out.append(StageInstance(instance_name(spec.name, level), spec, level))
    out.append(StageInstance("heads", STAGES[-1], None))
    return out


def static_sizes(plan, level: Optional[int]) -> dict:
    """Values of the static size names of the table for ``level`` (level 0's scan sizes for the
    stages that exist once)."""
    s = plan.scan[level if level is not None else 0]
    return {"Dv": plan.vid_in_dim, "Dt": plan.text_in_dim, "D": plan.embd_dim, "C": plan.text_enc_dim,
            "E": s.H * s.P, "H": s.H, "P": s.P, "N": s.N, "G": s.G, "heads": plan.attn_heads,
            "hd": plan.embd_dim // plan.attn_heads, "stride": plan.vid_stride}


def dim_value(dim, values: dict) -> int:
    """An entry of ``Port.dims`` with its names replaced by ``values`` (ints, products)."""
    if isinstance(dim, int):
        return dim
    out = 1
    for factor in str(dim).split("*"):
        out *= int(factor) if factor.isdigit() else values[factor]
    return out


def dynamic_symbol(dim) -> Optional[tuple]:
    """``(symbol, multiplier names)`` of a dynamic entry (``"3*slots"`` → ``("slots", ["3"])``),
    None for a static one."""
    if isinstance(dim, int):
        return None
    factors = str(dim).split("*")
    dyn = [f for f in factors if f in SYMBOLS]
    if not dyn:
        return None
    return dyn[0], [f for f in factors if f not in SYMBOLS]


def nvtx_name(stage_name: str, level: Optional[int]) -> str:
    """``runtime.<stage>`` or, for a call on a level's tokens (the heads too), ``runtime.<stage>[<level>]``."""
    return f"runtime.{stage_name}" if level is None else f"runtime.{stage_name}[{level}]"


# -- the largest window at given limits (TensorRT profiles) ------------------------------------
def longest_video_geometry(plan, max_clips: int):
    """Per-level lengths of the longest video ``max_clips`` features long (padded as grounding
    pads)."""
    pm = plan.pad_multiple
    return level_geometry(ceil_div(max_clips, pm) * pm, max_clips, plan.vid_stride, plan.num_levels)


def symbol_ranges(plan, limits, instance: StageInstance) -> dict:
    """``{symbol: (min, opt, max)}`` of the dynamic symbols of a stage instance's inputs, from
    the scheduler's windows at ``limits`` (``hieramamba.artifacts.EngineLimits``; every window
    also capped by its level's length at ``max_clips``)."""
    geo = longest_video_geometry(plan, limits.max_clips)
    c, cp = limits.chunk, limits.chunk // 2
    g = geo[instance.level if instance.level is not None else 0]
    upto = lambda n, cap: (1, min(n, cap), min(n, cap))  # noqa: E731  opt = max: chunks are mostly full
    batch = (1, limits.max_batch, limits.max_batch)
    text = (1, limits.max_text_len, limits.max_text_len)
    r = {"batch": batch, "bb": batch if plan.early_fusion else (1, 1, 1), "text": text,
         "text1": tuple(t + plan.text_extra_tokens for t in text),
         # front: a pre window (≤ chunk + one pair each side) plus FRONT_HALO each side, level-0 steps
         "vtime": upto(c + 4 + 2 * FRONT_HALO, geo[0].length),
         "tok": upto(c + 4, g.length),                     # pre: chunk + one pair each side
         "slen": (3,) + upto(3 * cp, 3 * g.pairs)[1:]}     # scan/post: the chunk's slots
    if instance.spec.name == "local":
        r["slots"] = upto(cp + 3, g.pairs)                # chunk + SLOT_HALO slots each side (in 3s)
    elif instance.spec.name.startswith("gattn"):
        r["slots"] = upto(g.pairs, g.pairs)              # the whole level
        r["rows"] = upto(largest_attn_block(3 * g.pairs, limits.attn_rows), 3 * g.pairs)
    if instance.spec.name == "heads":  # one graph for every level: the largest window of any level
        r["htime"] = max((upto(c + 4 + 3 * HEAD_HALO, geo[l].length) if plan.windowed[l]
                          else upto(geo[l].length, geo[l].length)) for l in range(plan.num_levels))
    return r


INDEX_MAX = 2 ** 31 - 1


def index_ranges(plan, limits, instance: StageInstance) -> dict:
    """Value ranges of the index (0-d int64) inputs, for TensorRT when it treats one as a shape
    tensor (``IOptimizationProfile.set_shape_input``)."""
    geo = longest_video_geometry(plan, limits.max_clips)
    g = geo[instance.level if instance.level is not None else 0]
    ranges = {"pe_start": (0, 0, geo[0].length), "pe_total": (1, geo[0].length, geo[0].length),
              "slot_offset": (0, 0, 3 * g.pairs), "n_valid": (0, g.valid + g.valid_pairs, INDEX_MAX)}
    return {p.name: ranges[p.name] for p in instance.spec.inputs if p.kind == "index"}


def profile_shapes(plan, limits, instance: StageInstance) -> dict:
    """``{input: (min shape, opt shape, max shape)}`` for the inputs with a dynamic axis."""
    ranges = symbol_ranges(plan, limits, instance)
    sizes = static_sizes(plan, instance.level)
    out = {}
    for port in instance.spec.inputs:
        if not any(dynamic_symbol(d) for d in port.dims):
            continue
        out[port.name] = tuple(
            tuple(dim_value(d, {**sizes, **{s: v[k] for s, v in ranges.items()}}) for d in port.dims)
            for k in range(3))
    return out
