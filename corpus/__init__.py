"""Corpus runs (DESIGN §7): ground whole datasets, one video per task with all its queries, on
local worker processes or Ray actors, each worker opening the bundle once. Each video's result
is written atomically with the bundle's hash (``OUT/results/<video_id>.json``) and is the
checkpoint a rerun resumes from; the reduce step writes the official predictions JSON.

* ``manifest``: ``VideoTask``, JSONL / parquet manifests, official-layout dataset splits.
* ``worker``: the per-video task (``CorpusWorker``), shared by both engines.
* ``local_engine`` / ``ray_engine``: worker processes / Ray actors (Ray imported only there).
* ``run``: the driver (resume, dispatch, retries, status table); ``reduce``: predictions JSON.

Importing this package imports neither Ray nor torch. See docs/corpus.md.
"""

from .manifest import VideoTask, manifest_from_dataset, read_manifest  # noqa: F401
from .results import DataSettings  # noqa: F401
from .run import RunOptions, RunSummary, run_corpus  # noqa: F401
from .worker import WorkerConfig  # noqa: F401
