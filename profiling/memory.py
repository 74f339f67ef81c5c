"""Process memory as the benchmarks report it: one home for reading it (Linux ``/proc``).

``peak_rss_mb`` is the RSS high-water mark ``VmHWM``, not ``ru_maxrss``: on Linux ``ru_maxrss``
survives exec, so a freshly started child reports at least its forking parent's peak.
``reset_peak_rss`` starts a new high-water mark (``/proc/self/clear_refs``), so one process can
measure the peak of each of several steps.
"""

from __future__ import annotations

import resource
import sys
from typing import Optional


def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident set size now (MB); NaN where it cannot be read."""
    value = _status_mb("VmRSS")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (MB): ``VmHWM``, or ``ru_maxrss`` off Linux."""
    value = _status_mb("VmHWM")
    if value is not None:
        return value
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024


def reset_peak_rss() -> bool:
    """Make the high-water mark the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
