"""HieraMamba video grounding: faithful model, export, and a lean runtime.

Importing this package is cheap and does not import torch: ``hieramamba.runtime`` relies on
that. Torch-backed names are resolved lazily on first attribute access.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: F401  (re-exported)
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    HieraMambaError,
    InputError,
    ProfilingError,
)

_LAZY = {
    "HieraMamba": ("hieramamba.model", "HieraMamba"),
    "build_model": ("hieramamba.model", "build_model"),
    "load_config": ("hieramamba.config", "load_config"),
    "load_experiment": ("hieramamba.checkpoint", "load_experiment"),
    "save_experiment": ("hieramamba.checkpoint", "save_experiment"),
    "load_default": ("hieramamba.checkpoint", "load_default"),
    "Grounder": ("hieramamba.inference", "Grounder"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'hieramamba' has no attribute {name!r}")
