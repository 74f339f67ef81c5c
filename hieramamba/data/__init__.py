"""Data: the official ``video_centric`` dataset, batching, GloVe tokens, a synthetic dataset.

    features on disk → :class:`VideoCentricDataset` (samples) → :func:`collate_train` /
    :func:`batchify` (padded batches) → model / trainer

See :mod:`hieramamba.data.datasets` for the sample format and the decisions on bad inputs.
"""

from .collate import Batch, batchify, collate_train, pad_texts, pad_videos, trivial_collate
from .datasets import VideoCentricDataset, load_annotations, make_dataset, read_feature_array
from .synthetic import TINY_DIMS, SyntheticDataset, make_synthetic
from .tokenizer import GloveTokenizer, tokenize

__all__ = [
    "Batch", "batchify", "collate_train", "pad_texts", "pad_videos", "trivial_collate",
    "VideoCentricDataset", "load_annotations", "make_dataset", "read_feature_array",
    "TINY_DIMS", "SyntheticDataset", "make_synthetic",
    "GloveTokenizer", "tokenize",
]
