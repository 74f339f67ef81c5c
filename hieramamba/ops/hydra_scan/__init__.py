"""HydraScan, Hydra's bidirectional shifted SSD scan (DESIGN §2): one folder for the op.

* ``reference.py`` — the math: the pure-PyTorch chunked reference and the boundary terms of the
  one-step shift that chunked callers add (``scan_boundary_term``, ``add_boundary_terms``).
* ``validate.py`` — the one input check and the empty-input rule (B = 0 / L = 0).
* ``op.py`` — ``hydra_scan`` (the torch custom op, autograd, dispatch to registered kernels,
  ``scan_override`` for the exporter).
* ``native.py`` — the C++/CUDA kernels of ``plugins/`` for torch tensors (ctypes; registers
  nothing).

The float64 oracle every implementation is tested against is a plain recurrence in the tests
(``tests/scan_oracle.py``).
"""

from .op import (  # noqa: F401  (re-exported)
    hydra_scan,
    register_kernel,
    register_native_cpu_kernel,
    register_native_cuda_kernel,
    scan_override,
    unregister_kernel,
)
from .reference import (  # noqa: F401
    TRACED_CHUNK_SIZE,
    add_boundary_terms,
    compute_dtype,
    hydra_scan_reference,
    scan_boundary_term,
)
