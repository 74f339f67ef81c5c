"""Checks of user-supplied features shared by every grounding entry point (the eager ``Grounder``
and the torch-free runtime). Torch-free: only shapes are inspected here; each caller checks
values (NaN/Inf) with its own array library."""

from __future__ import annotations

from .errors import InputError

TEXT_OVERFLOW = ("error", "truncate")


def check_video_shape(shape, vid_dim: int) -> None:
    """``shape`` of video features, expected ``(num_clips, vid_dim)`` with ``num_clips ≥ 1``."""
    if len(shape) != 2:
        raise InputError(f"video features must be 2-D (num_clips, {vid_dim}), got shape {tuple(shape)}")
    if shape[1] != vid_dim:
        hint = " (it looks transposed: pass time-major (num_clips, dim))" if shape[0] == vid_dim else ""
        raise InputError(f"video feature dim is {shape[1]}, the model expects {vid_dim}{hint}")
    if shape[0] == 0:
        raise InputError("video has zero clips: nothing to ground")


def query_tokens_to_keep(index: int, shape, text_dim: int, max_text_len: int, batchify: bool,
                         text_overflow: str) -> int:
    """Validate query ``index`` of ``shape`` ``(num_tokens, text_dim)``; return how many tokens to
    keep. Batched queries are padded to ``eval.max_text_len``: a longer one raises (the official
    evaluator would crash) unless ``text_overflow == "truncate"``."""
    if len(shape) != 2 or shape[1] != text_dim:
        raise InputError(f"query {index}: expected shape (num_tokens, {text_dim}), got {tuple(shape)}")
    if shape[0] == 0:
        raise InputError(f"query {index} has zero tokens")
    if batchify and shape[0] > max_text_len:
        if text_overflow == "error":
            raise InputError(
                f"query {index} has {shape[0]} tokens, more than eval.max_text_len={max_text_len}; "
                "pass text_overflow='truncate' (--text-overflow truncate) to keep the first tokens")
        return max_text_len
    return shape[0]
