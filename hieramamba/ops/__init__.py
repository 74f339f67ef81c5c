"""Custom ops. ``hydra_scan`` is Hydra's bidirectional shifted SSD scan (DESIGN §2)."""

from .hydra_scan import (  # noqa: F401  (re-exported)
    hydra_scan,
    hydra_scan_reference,
    register_kernel,
    scan_boundary_term,
    unregister_kernel,
)
