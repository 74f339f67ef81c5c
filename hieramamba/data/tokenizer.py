"""GloVe word features for TACoS (REFERENCE §12.2): lower-cased ``\\w+`` tokens, one GloVe vector
each, out-of-vocabulary words → zero vector. Output ``(dim, T_tokens)`` float32.

The official tokenizer converts the whole 1 GB text file into a memory-mapped binary cache next to
it. Here only the words a dataset actually uses are read (one pass over the file, keeping the
vectors of a requested vocabulary), and the result is cached in memory per (file, dim), so several
datasets built from one file share it. Vectors equal the official ones: each value is parsed with
Python ``float`` and stored as float32; lines whose number of values differs from ``dim`` give a
zero vector (the official leaves such rows zero).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Iterable, Optional

import numpy as np
import torch

from ..errors import DataError

__all__ = ["tokenize", "GloveTokenizer"]

_TOKEN_RE = re.compile(r"\w+")
_CACHE: dict[tuple, dict] = {}
_CACHE_LOCK = threading.Lock()


def tokenize(text: str) -> list[str]:
    """Lower-case ``\\w+`` tokens (the official ``basic_english_tokenizer``)."""
    return _TOKEN_RE.findall(text.lower())


class GloveTokenizer:
    """Sentence → ``(dim, T)`` float32 GloVe features.

    Args:
        path: ``glove.6B.300d.txt`` (or any file of lines ``word v1 ... v_dim``).
        dim: vector size (the config's ``text_net.in_dim``, 300 for TACoS).
        vocab: words to keep (e.g. every token of a dataset's sentences). ``None`` keeps the whole
            file (fine for small files only: the full 6B/300d table is ~480 MB as float32).
            Words requested later that were not loaded are read on demand (one more file pass).
    """

    def __init__(self, path: str | os.PathLike, dim: int = 300, vocab: Optional[Iterable[str]] = None):
        self.path = os.fspath(path)
        self.dim = int(dim)
        if not os.path.isfile(self.path):
            raise DataError(
                f"GloVe file not found: {self.path!r} (TACoS text features are GloVe vectors; "
                "download glove.6B.zip from https://nlp.stanford.edu/projects/glove/ and pass the "
                "path of glove.6B.300d.txt)")
        st = os.stat(self.path)
        self._key = (os.path.realpath(self.path), st.st_size, st.st_mtime_ns, self.dim)
        with _CACHE_LOCK:
            self._entry = _CACHE.setdefault(self._key, {"vecs": {}, "scanned": set(), "all": False})
        self._zero = np.zeros(self.dim, dtype=np.float32)
        self.ensure(vocab)

    def ensure(self, words: Optional[Iterable[str]]) -> None:
        """Make sure the vectors of ``words`` (``None`` = all words of the file) are loaded."""
        entry = self._entry
        if entry["all"]:
            return
        if words is None:
            self._scan(None)
            return
        missing = set(words) - entry["scanned"]
        if missing:
            self._scan(missing)

    def _scan(self, wanted: Optional[set]) -> None:
        entry = self._entry
        vecs = {}
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                for line_no, line in enumerate(f):
                    head, sep, rest = line.partition(" ")
                    if line_no == 0:
                        n_vals = len(rest.split())
                        if not sep or n_vals != self.dim:
                            raise DataError(
                                f"GloVe file {self.path!r}: first line has {n_vals} values, "
                                f"expected dim={self.dim} (text_net.in_dim)")
                    if wanted is not None and head not in wanted:
                        continue
                    values = rest.rstrip().split(" ")
                    if len(values) != self.dim:
                        vecs[head] = self._zero
                        continue
                    try:
                        vecs[head] = np.asarray([float(v) for v in values], dtype=np.float32)
                    except ValueError as exc:
                        raise DataError(
                            f"GloVe file {self.path!r}, line {line_no + 1}: bad number ({exc})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read GloVe file {self.path!r}: {exc}") from exc
        with _CACHE_LOCK:
            entry["vecs"].update(vecs)      # a repeated word keeps its last line, as official
            if wanted is None:
                entry["all"] = True
            else:
                entry["scanned"] |= wanted

    def vector(self, word: str) -> np.ndarray:
        return self._entry["vecs"].get(word, self._zero)

    def __call__(self, text: str, max_len: Optional[int] = None) -> torch.Tensor:
        tokens = tokenize(text)
        if max_len is not None:
            tokens = tokens[:max_len]
        self.ensure(tokens)
        if not tokens:
            return torch.zeros(self.dim, 0)
        feats = np.stack([self.vector(w) for w in tokens], axis=1)     # (dim, T)
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
