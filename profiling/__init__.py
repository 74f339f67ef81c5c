"""NVTX ranges, benchmark harness, reports and Nsight recipes (DESIGN §1, §6)."""
