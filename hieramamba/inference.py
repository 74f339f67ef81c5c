"""Grounding with the eager PyTorch model: ``Grounder`` = the grounding pipeline
(``hieramamba.pipeline``) over ``EagerEngine``, the whole-sequence forward.

It follows the official per-video evaluator (REFERENCE §8.2): the video is zero-padded to a
multiple of ``2^(levels−1)·stride``; with ``eval.batchify_text_queries`` (Ego4D, TACoS) all
queries are padded to ``eval.max_text_len`` and run as one batch, otherwise (MAD) each query
runs the whole pipeline alone at its own length. Under ``official`` mask semantics the number
of queries run together changes the result (REFERENCE §13.1), which is why the default keeps
the official grouping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device
from .model import HieraMamba
from .pipeline import GroundingPipeline, Segment  # noqa: F401  (Segment re-exported)
from .stage_modules import plan_from_model


class EagerEngine:
    """The whole-sequence eval forward (``HieraMamba.forward_levels``) as a pipeline engine: one
    call per query batch, the video padded to the plan's multiple."""

    max_batch = None  # a whole official group at once, as the official evaluator

    def __init__(self, model: HieraMamba, opt: dict, device="cpu", dtype=torch.float32):
        self.device, self.dtype = resolve_device(device), dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.plan = plan_from_model(self.model, opt)
        self.input_dtype = str(dtype).replace("torch.", "")

    @torch.no_grad()
    def level_outputs(self, clips, text, text_mask, official_batch, on_level=None):
        length = clips.shape[0]
        pm = self.plan.pad_multiple
        padded = -(-length // pm) * pm
        v = torch.from_numpy(np.ascontiguousarray(clips))
        vid = F.pad(v.t().to(self.device, self.dtype), (0, padded - length))[None]
        vid_mask = (torch.arange(padded, device=self.device) < length)[None, None]
        text = torch.from_numpy(text).to(self.device, self.dtype)
        text_mask = torch.from_numpy(text_mask).to(self.device)
        logits, offsets, masks = self.model.forward_levels(vid, vid_mask, text, text_mask)
        if on_level is not None:
            for level in range(len(logits)):
                on_level(level)
        return ([lg.double().cpu().numpy() for lg in logits], [of.double().cpu().numpy() for of in offsets],
                [m.cpu().numpy() for m in masks])


class Grounder(GroundingPipeline):
    """Ground text queries in one video with a loaded model (eager, whole sequence).

    ``text_overflow``: what to do with a query longer than ``eval.max_text_len`` tokens. The
    official evaluator crashes on such a query; ``"error"`` (default) raises an InputError,
    ``"truncate"`` keeps the first ``max_text_len`` tokens."""

    def __init__(self, model: HieraMamba, opt: dict, device="cpu", dtype=torch.float32,
                 text_overflow: str = "error"):
        super().__init__(EagerEngine(model, opt, device, dtype), text_overflow=text_overflow)
        self.model, self.opt = self.engine.model, opt

    @classmethod
    def from_experiment(cls, folder: str | Path, ckpt: str = "last", **kwargs) -> "Grounder":
        from .checkpoint import load_experiment

        mask_semantics = kwargs.pop("mask_semantics", "official")
        model, opt = load_experiment(folder, ckpt, mask_semantics=mask_semantics)
        return cls(model, opt, **kwargs)
