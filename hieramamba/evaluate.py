"""Evaluation (REFERENCE §8.4): R@k × IoU≥θ over all queries, official predictions JSON.

Per video the evaluation dataset (``video_centric``, all of a video's queries in one sample, no
crop) feeds a grounding pipeline (``hieramamba.pipeline``: the same per-video path as the
official ``EvaluatorAuxiliary``: padding rule, text batching, decoding, Soft-NMS + voting,
seconds) — the eager :class:`~hieramamba.inference.Grounder`, or any ready pipeline such as the
chunked runtime on an export bundle (:func:`evaluate_pipeline`) — and :func:`~hieramamba.metrics.predictions_json` scores the
results (ranks and thresholds from the config's ``eval`` section). Nothing of either is
re-implemented here.

Outputs, as the official evaluator names them: ``eval_<ckpt>.txt`` (one ``Rank@k_IoU@θ: value``
line per metric, percentages) and ``predictions_<ckpt>.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .data import make_dataset
from .errors import InputError
from .inference import Grounder
from .metrics import metric_key, predictions_json
from .pipeline import GroundingPipeline

__all__ = ["evaluate_dataset", "evaluate_model", "evaluate_pipeline", "evaluate_experiment", "format_metrics",
           "check_plan_matches_config"]


def evaluate_dataset(pipeline: GroundingPipeline, dataset, eval_cfg: dict, progress: bool = False,
                     max_videos: Optional[int] = None) -> dict:
    """Ground every query of ``dataset`` (an evaluation :class:`VideoCentricDataset`) with
    ``pipeline`` and return the official predictions JSON dict (``summary.overall_recall_at_iou``
    holds the metrics). ``eval_cfg``: the config's ``eval`` section (ranks, IoU thresholds)."""
    from tqdm.auto import tqdm

    ranks = tuple(eval_cfg.get("ranks", (1, 5)))
    threshs = tuple(eval_cfg.get("iou_threshs", (0.3, 0.5)))
    n = len(dataset) if max_videos is None else min(len(dataset), int(max_videos))
    if n == 0:
        raise InputError("the evaluation dataset has no videos")
    videos = []
    for i in tqdm(range(n), desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        s = dataset[i]
        results = pipeline.ground(
            s["vid"].t(), [t.t() for t in s["text"]], fps=s["fps"], duration=s["duration"],
            clip_size=s["clip_size"], clip_stride=s["clip_stride"])
        preds = [(np.array([[g.start_sec, g.end_sec] for g in segs], dtype=np.float32).reshape(-1, 2),
                  np.array([g.score for g in segs], dtype=np.float32)) for segs in results]
        targets = [np.asarray(seg, dtype=np.float32) for seg in s["segment"].numpy()]
        videos.append((s["vid_id"], preds, targets))
    return predictions_json(videos, ranks, threshs)


def evaluate_model(model, opt: dict, *, root=None, data_paths: Optional[dict] = None,
                   split: Optional[str] = None, device="cpu", text_overflow: str = "error",
                   progress: bool = False, max_videos: Optional[int] = None,
                   outside_moments: str = "error") -> dict:
    """Evaluate a loaded model on the split ``eval.data.split`` (or ``split``) of the dataset the
    config describes (paths overridable as in :func:`hieramamba.data.make_dataset`)."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = make_dataset(opt, False, root=root, split=split, outside_moments=outside_moments,
                           **(data_paths or {}))
    grounder = Grounder(model, opt, device=device, text_overflow=text_overflow)
    return evaluate_dataset(grounder, dataset, opt["eval"], progress=progress, max_videos=max_videos)


def evaluate_pipeline(pipeline: GroundingPipeline, opt: dict, *, root=None, data_paths: Optional[dict] = None,
                      split: Optional[str] = None, progress: bool = False, max_videos: Optional[int] = None,
                      mask_semantics: Optional[str] = None, source: str = "the pipeline",
                      outside_moments: str = "error") -> dict:
    """Evaluate a ready pipeline (e.g. the chunked runtime on an export bundle:
    ``hieramamba.runtime.GroundingRuntime.load``) on a split of the dataset ``opt`` describes — the
    config its model came from, which also gives the ranks and IoU thresholds. Refuses a pipeline
    whose decoding settings differ from ``opt``'s (exported from another config), or whose mask
    semantics differ from ``mask_semantics`` when given; ``source`` names it in those messages."""
    ev, plan = opt["eval"], pipeline.plan
    if mask_semantics is not None and plan.mask_semantics != mask_semantics:
        raise InputError(f"{source}: exported with mask semantics {plan.mask_semantics!r}, "
                         f"{mask_semantics!r} was asked for; evaluate with that setting or re-export")
    check_plan_matches_config(plan, opt, source, "evaluate it with the config it was exported from")
    dataset = make_dataset(opt, False, root=root, split=split, outside_moments=outside_moments, **(data_paths or {}))
    return evaluate_dataset(pipeline, dataset, ev, progress=progress, max_videos=max_videos)


def check_plan_matches_config(plan, opt: dict, source: str, remedy: str) -> None:
    """``InputError`` unless a bundle's plan was exported from a config like ``opt`` where
    grounding reads it: decoding, text length and clip geometry (stride × downsample rate)."""
    ev, data = opt["eval"], opt["train"]["data"]
    want = {"decode": {k: ev[k] for k in plan.decode}, "max_text_len": int(ev.get("max_text_len", 24)),
            "clip_size": float(data.get("clip_size", 1)),
            "clip_stride": float(data.get("clip_stride", 1) * data.get("downsample_rate", 1))}
    for key, value in want.items():
        if getattr(plan, key) != value:
            raise InputError(f"{source}: exported with {key}={getattr(plan, key)!r}, the config has {value!r}; {remedy}")


def format_metrics(summary: dict) -> str:
    """``eval_<ckpt>.txt`` body: one ``Rank@k_IoU@θ: xx.xx`` line per metric (percent)."""
    rec = summary["overall_recall_at_iou"]
    lines = [f"{k}: {100.0 * v:.2f}" for k, v in rec.items()]
    lines.append(f"queries: {summary['total_queries']}, videos: {summary['total_videos']}")
    return "\n".join(lines) + "\n"


def evaluate_experiment(folder, ckpt: str = "last", *, out_dir=None, root=None,
                        data_paths: Optional[dict] = None, split: Optional[str] = None,
                        device="cpu", use_ema: bool = True, mask_semantics: str = "official",
                        text_overflow: str = "error", progress: bool = False,
                        max_videos: Optional[int] = None, pipeline: Optional[GroundingPipeline] = None,
                        pipeline_source: str = "the pipeline", outside_moments: str = "error") -> dict:
    """Evaluate an official (or our own) experiment folder: loads ``opt.yaml`` and the EMA weights
    of ``models/<ckpt>.pth`` strictly, runs :func:`evaluate_model`, writes ``eval_<ckpt>.txt`` and
    ``predictions_<ckpt>.json`` into ``out_dir`` (default: the folder). Data paths in the
    config are relative to ``root`` (default: the current directory, as the official scripts
    assume running from the repository root). With ``pipeline`` (e.g. the chunked runtime on an
    export bundle), it runs instead of the weights (:func:`evaluate_pipeline`) and the files are
    named ``eval_bundle.txt`` / ``predictions_bundle.json``. Returns the predictions dict."""
    from .checkpoint import load_experiment, load_experiment_config
    from .device import resolve_device

    if pipeline is not None:
        tag = "bundle"
        t0 = time.perf_counter()
        result = evaluate_pipeline(pipeline, load_experiment_config(folder), root=root, data_paths=data_paths,
                                   split=split, progress=progress, max_videos=max_videos,
                                   mask_semantics=mask_semantics, source=pipeline_source,
                                   outside_moments=outside_moments)
    else:
        tag = ckpt
        device = resolve_device(device)
        model, opt = load_experiment(folder, ckpt, use_ema=use_ema, mask_semantics=mask_semantics,
                                     device=device)
        t0 = time.perf_counter()
        result = evaluate_model(model, opt, root=root, data_paths=data_paths, split=split, device=device,
                                text_overflow=text_overflow, progress=progress, max_videos=max_videos,
                                outside_moments=outside_moments)
    elapsed = time.perf_counter() - t0
    out = Path(out_dir) if out_dir is not None else Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    text = format_metrics(result["summary"]) + f"seconds: {elapsed:.1f}\n"
    (out / f"eval_{tag}.txt").write_text(text)
    tmp = out / f"predictions_{tag}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / f"predictions_{tag}.json")
    return result


def r_at(result: dict, rank: int, iou: float) -> float:
    """One metric from a predictions dict, e.g. ``r_at(res, 1, 0.5)``."""
    return result["summary"]["overall_recall_at_iou"][metric_key(rank, iou)]
