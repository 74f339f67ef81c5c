"""Triton Inference Server serving of an export bundle (DESIGN §7, docs/serving.md).

* ``adapter`` — the torch-free request adapter and the models' tensor tables
* ``triton_model`` — the python-backend model (``model.py`` of a repository imports it)
* ``repository`` — a model repository for a bundle (``hieramamba triton-repo``)
* ``server`` — the ``tritonserver`` binary of nvidia-pytriton on such a repository (``hieramamba serve``)
* ``client`` — ``tritonclient`` requests (``hieramamba ground --server``)

Nothing here imports torch; Triton and tritonclient are imported only where used.
"""
