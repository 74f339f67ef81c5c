"""Custom ops. ``hydra_scan`` is Hydra's bidirectional shifted SSD scan (DESIGN §2); its folder
``hieramamba/ops/hydra_scan/`` holds the reference, the op, its validator and the native-kernel
wrappers. (``hieramamba.ops.hydra_scan`` as an attribute is the function; import submodules by
their full name, e.g. ``from hieramamba.ops.hydra_scan import native``.)"""

from .hydra_scan import (  # noqa: F401  (re-exported)
    add_boundary_terms,
    hydra_scan,
    hydra_scan_reference,
    register_kernel,
    scan_boundary_term,
    scan_override,
    unregister_kernel,
)
