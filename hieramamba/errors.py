"""One exception family for every user-facing failure (DESIGN §6).

Messages name the input, the expected value and the actual value, so a user can fix the call
without reading a traceback into the model.
"""


class HieraMambaError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(HieraMambaError, ValueError):
    """A configuration is missing, malformed or unsupported."""


class CheckpointError(HieraMambaError):
    """A checkpoint file is missing, corrupt, or does not match the configuration."""


class InputError(HieraMambaError, ValueError):
    """Bad user input: wrong shape or feature dim, NaN/Inf, empty video, too-long text."""


class DataError(HieraMambaError):
    """A dataset file (annotation JSON, feature file) is missing, truncated or inconsistent."""


class ExportError(HieraMambaError):
    """ONNX export, graph checks or engine building failed or is unsupported."""


class BackendUnavailableError(HieraMambaError):
    """An optional backend (TensorRT, a plugin library, ONNX Runtime) is not installed or not found."""


class ProfilingError(HieraMambaError, ValueError):
    """A profiling switch or report input is invalid."""
