"""The lean inference runtime: chunk scheduler, backends, and the grounding pipeline over them.
Never imports torch at import time (DESIGN §1, §4).

``GroundingRuntime`` grounds queries in one video chunk by chunk on a backend:
``GroundingRuntime.from_model(model, opt)`` (torch backend, eager) or
``GroundingRuntime.load(bundle_dir, backend=...)`` for exported bundles (see docs/runtime.md).
"""

from hieramamba.pipeline import Segment  # noqa: F401

from .api import ChunkedEngine, GroundingRuntime  # noqa: F401
from .scheduler import ChunkScheduler, HaloStream, PaddedClips  # noqa: F401
