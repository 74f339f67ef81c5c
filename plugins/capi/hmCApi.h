/* C ABI of libhieramamba_plugins: what ctypes (hieramamba/native_library.py, hieramamba/ops/hydra_scan/native.py) and other languages call.
 *
 * Every function returns HM_OK (0) or an HM_ERR_* code and writes a NUL-terminated message into
 * err[0..errlen) on failure (err may be NULL). Tensors are dense row-major; shapes and dtype rules are
 * in plugins/hydra_scan/hydraScanKernel.h and plugins/hydra_scan/README.md.
 * Bump HM_ABI_VERSION whenever a signature or struct here changes: the Python loader refuses a library
 * whose hm_abi_version() differs from the one it was written for. */
#ifndef HIERAMAMBA_CAPI_H
#define HIERAMAMBA_CAPI_H

#include "../hydra_scan/hydraScanKernel.h"

#define HM_ABI_VERSION 7 /* 7: RegisterCustomOps also adds hieramamba::Bf16FeedForward; 6: DepthwiseConv; 5: Bf16Conv */

#if defined(_WIN32)
#define HM_API __declspec(dllexport)
#else
#define HM_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

HM_API int hm_abi_version(void);

/* "hieramamba_plugins <version> (abi <n>; kernels: cpu[, cuda archs 80,90])" */
HM_API const char* hm_version(void);

/* 1 when the CUDA kernel was compiled into this library, else 0. */
HM_API int hm_has_cuda(void);

/* Checks shape and dtype codes without running anything. */
HM_API int hm_hydra_scan_validate(const HmScanShape* shape, int dtype, int dt_dtype, char* err, int errlen);

/* Bytes of device workspace hm_hydra_scan_cuda needs (its per-chunk states; 0 when L or B is 0 or
 * the shape is invalid). A function of shape and dtype only: the same for every
 * HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK setting, which it does not read. */
HM_API size_t hm_hydra_scan_workspace_size(const HmScanShape* shape, int dtype);

/* How hm_hydra_scan_cuda would run this shape (host-side planning: needs no GPU and works in builds
 * without CUDA): time steps per tile and per state chunk, 1 when the intra-chunk products run on
 * tensor cores, and the workspace bytes (hm_hydra_scan_workspace_size's: tile and chunk follow the
 * tiles-per-chunk setting, the workspace does not). HM_ERR_INVALID_ARGUMENT for a bad shape or dtype,
 * HM_ERR_UNSUPPORTED when the CUDA kernel cannot run the shape or the tiles-per-chunk setting
 * (HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK) is invalid; the message says why. */
HM_API int hm_hydra_scan_cuda_plan(const HmScanShape* shape, int dtype, int* tile, int* chunk, int* tensor_cores,
    size_t* workspace_size, char* err, int errlen);

/* CPU kernel, host pointers. dtype: x, B_*, C_*, y; dt_dtype: dt_f, dt_b, A, dt_bias (float32 or dtype).
 * state_f0 / state_b0 may be NULL (zero initial state). num_threads <= 0: all hardware threads. */
HM_API int hm_hydra_scan_cpu(const HmScanShape* shape, int dtype, int dt_dtype, const void* x, const void* dt_f,
    const void* dt_b, const void* A, const void* dt_bias, const void* B_f, const void* C_f, const void* B_b,
    const void* C_b, const float* state_f0, const float* state_b0, void* y, float* state_f, float* state_b,
    int num_threads, char* err, int errlen);

/* CUDA kernel, device pointers, asynchronous on `stream` (a cudaStream_t; NULL = legacy default stream).
 * Always exported; returns HM_ERR_UNSUPPORTED when the library was built without CUDA. */
HM_API int hm_hydra_scan_cuda(const HmScanShape* shape, int dtype, int dt_dtype, const void* x, const void* dt_f,
    const void* dt_b, const void* A, const void* dt_bias, const void* B_f, const void* C_f, const void* B_b,
    const void* C_b, const float* state_f0, const float* state_b0, void* y, float* state_f, float* state_b,
    void* workspace, size_t workspace_size, HmCudaStream stream, char* err, int errlen);

/* ONNX Runtime custom-op kernel (plugins/hydra_scan/hydraScanOrtOp.cpp). This library is also an ONNX
 * Runtime custom-op library: SessionOptions.register_custom_ops_library(<this file>) calls its
 * RegisterCustomOps, which makes ONNX Runtime run hieramamba::HydraScan nodes with the CPU kernel on
 * the session's intra-op thread pool (KernelContext_ParallelFor). */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* HIERAMAMBA_CAPI_H */
