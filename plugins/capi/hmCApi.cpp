// C ABI wrappers: validate, dispatch, and turn C++ errors into codes and messages. No exception
// may cross this boundary (ctypes callers cannot catch them).
#include "hmCApi.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>

#ifndef HM_VERSION_STRING
#define HM_VERSION_STRING "0.0.0"
#endif
#ifndef HM_CUDA_ARCHS
#define HM_CUDA_ARCHS ""
#endif

namespace
{

using namespace hieramamba::hydra_scan;

int fail(int code, const std::string& message, char* err, int errlen)
{
    if (err != nullptr && errlen > 0)
    {
        const size_t n = std::min(message.size(), static_cast<size_t>(errlen - 1));
        std::memcpy(err, message.data(), n);
        err[n] = '\0';
    }
    return code;
}

HmScanTensors pack(const void* x, const void* dt_f, const void* dt_b, const void* A, const void* dt_bias,
    const void* B_f, const void* C_f, const void* B_b, const void* C_b, const float* state_f0,
    const float* state_b0, void* y, float* state_f, float* state_b)
{
    return HmScanTensors{x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, y, state_f, state_b};
}

// Caller mistakes first, so that the code tells "fix your call" apart from "the kernel failed".
std::string checkCall(const HmScanShape* shape, int dtype, int dt_dtype, const HmScanTensors* t)
{
    if (shape == nullptr)
    {
        return "HydraScan: shape pointer is NULL";
    }
    std::string e = validateShape(*shape);
    if (e.empty())
    {
        e = validateDtypes(dtype, dt_dtype);
    }
    if (e.empty() && t != nullptr)
    {
        e = validatePointers(*shape, *t);
    }
    return e;
}

} // namespace

extern "C" {

int hm_abi_version(void)
{
    return HM_ABI_VERSION;
}

const char* hm_version(void)
{
    static const std::string text = std::string("hieramamba_plugins ") + HM_VERSION_STRING + " (abi "
        + std::to_string(HM_ABI_VERSION) + "; kernels: cpu"
        + (hieramamba::hydra_scan::cpuUsesAvx512() ? std::string(" (avx512 scan step)") : std::string())
        + (cudaCompiled() ? std::string(", cuda archs ") + HM_CUDA_ARCHS : std::string()) + ")";
    return text.c_str();
}

int hm_has_cuda(void)
{
    return cudaCompiled() ? 1 : 0;
}

int hm_hydra_scan_validate(const HmScanShape* shape, int dtype, int dt_dtype, char* err, int errlen)
{
    const std::string e = checkCall(shape, dtype, dt_dtype, nullptr);
    return e.empty() ? HM_OK : fail(HM_ERR_INVALID_ARGUMENT, e, err, errlen);
}

size_t hm_hydra_scan_workspace_size(const HmScanShape* shape, int dtype)
{
    if (shape == nullptr || !validateDtypes(dtype, HM_FLOAT32).empty())
    {
        return 0;
    }
    return cudaWorkspaceSize(*shape, static_cast<HmDType>(dtype));
}

int hm_hydra_scan_cuda_plan(const HmScanShape* shape, int dtype, int* tile, int* chunk, int* tensor_cores,
    size_t* workspace_size, char* err, int errlen)
{
    const std::string e = checkCall(shape, dtype, HM_FLOAT32, nullptr);
    if (!e.empty())
    {
        return fail(HM_ERR_INVALID_ARGUMENT, e, err, errlen);
    }
    CudaPlan plan{};
    const std::string why = planCuda(*shape, static_cast<HmDType>(dtype), &plan);
    if (!why.empty())
    {
        return fail(HM_ERR_UNSUPPORTED, why, err, errlen);
    }
    if (tile != nullptr)
    {
        *tile = plan.tile;
    }
    if (chunk != nullptr)
    {
        *chunk = plan.chunk;
    }
    if (tensor_cores != nullptr)
    {
        *tensor_cores = plan.tensorCores ? 1 : 0;
    }
    if (workspace_size != nullptr)
    {
        *workspace_size = plan.workspaceBytes;
    }
    return HM_OK;
}

int hm_hydra_scan_cpu(const HmScanShape* shape, int dtype, int dt_dtype, const void* x, const void* dt_f,
    const void* dt_b, const void* A, const void* dt_bias, const void* B_f, const void* C_f, const void* B_b,
    const void* C_b, const float* state_f0, const float* state_b0, void* y, float* state_f, float* state_b,
    int num_threads, char* err, int errlen)
{
    try
    {
        const HmScanTensors t
            = pack(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, y, state_f, state_b);
        std::string e = checkCall(shape, dtype, dt_dtype, &t);
        if (!e.empty())
        {
            return fail(HM_ERR_INVALID_ARGUMENT, e, err, errlen);
        }
        e = runCpu(*shape, static_cast<HmDType>(dtype), static_cast<HmDType>(dt_dtype), t, num_threads);
        return e.empty() ? HM_OK : fail(HM_ERR_RUNTIME, e, err, errlen);
    }
    catch (const std::exception& ex)
    {
        return fail(HM_ERR_RUNTIME, std::string("HydraScan CPU: ") + ex.what(), err, errlen);
    }
    catch (...)
    {
        return fail(HM_ERR_RUNTIME, "HydraScan CPU: unknown exception", err, errlen);
    }
}

int hm_hydra_scan_cuda(const HmScanShape* shape, int dtype, int dt_dtype, const void* x, const void* dt_f,
    const void* dt_b, const void* A, const void* dt_bias, const void* B_f, const void* C_f, const void* B_b,
    const void* C_b, const float* state_f0, const float* state_b0, void* y, float* state_f, float* state_b,
    void* workspace, size_t workspace_size, HmCudaStream stream, char* err, int errlen)
{
    try
    {
        const HmScanTensors t
            = pack(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, y, state_f, state_b);
        std::string e = checkCall(shape, dtype, dt_dtype, &t);
        if (!e.empty())
        {
            return fail(HM_ERR_INVALID_ARGUMENT, e, err, errlen);
        }
        if (!cudaCompiled())
        {
            return fail(HM_ERR_UNSUPPORTED,
                launchCuda(*shape, static_cast<HmDType>(dtype), static_cast<HmDType>(dt_dtype), t, workspace,
                    workspace_size, stream),
                err, errlen);
        }
        e = validateCudaShape(*shape, static_cast<HmDType>(dtype));
        if (!e.empty())
        {
            return fail(HM_ERR_UNSUPPORTED, e, err, errlen);
        }
        const size_t need = cudaWorkspaceSize(*shape, static_cast<HmDType>(dtype));
        if (workspace_size < need || (need > 0 && workspace == nullptr))
        {
            return fail(HM_ERR_INVALID_ARGUMENT,
                "HydraScan CUDA: workspace needs " + std::to_string(need) + " bytes, got "
                    + std::to_string(workspace_size) + (workspace == nullptr ? " (NULL)" : ""),
                err, errlen);
        }
        e = launchCuda(*shape, static_cast<HmDType>(dtype), static_cast<HmDType>(dt_dtype), t, workspace,
            workspace_size, stream);
        return e.empty() ? HM_OK : fail(HM_ERR_RUNTIME, e, err, errlen);
    }
    catch (const std::exception& ex)
    {
        return fail(HM_ERR_RUNTIME, std::string("HydraScan CUDA: ") + ex.what(), err, errlen);
    }
    catch (...)
    {
        return fail(HM_ERR_RUNTIME, "HydraScan CUDA: unknown exception", err, errlen);
    }
}

} // extern "C"
