// CUDA HydraScan launcher: validates, plans (planCuda) and launches the three kernels of
// hydraScanKernelDevice.cuh (design notes there) on one stream.
#include "hydraScanKernelDevice.cuh"

namespace hieramamba
{
namespace hydra_scan
{
namespace
{

using namespace device;

std::string cudaErrorText(const char* what, cudaError_t e)
{
    return std::string("HydraScan CUDA kernel: ") + what + " failed: " + cudaGetErrorName(e) + " ("
        + cudaGetErrorString(e) + ")";
}

// Dynamic shared memory above 48 KiB must be opted into per kernel. The limit is set to the plan
// budget, not to this call's need: the attribute belongs to the kernel, so two threads enqueueing
// different shapes (two TensorRT execution contexts) must not lower it under each other.
template <typename Kernel>
std::string allowSharedMemory(Kernel kernel)
{
    int dev = 0;
    int optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
    {
        e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    }
    if (e != cudaSuccess)
    {
        return cudaErrorText("querying the device's shared memory", e);
    }
    if (kCudaSharedMemoryBudget > static_cast<size_t>(optin))
    {
        return "HydraScan CUDA kernel: needs up to " + std::to_string(kCudaSharedMemoryBudget)
            + " bytes of shared memory per block, this GPU allows " + std::to_string(optin)
            + " (the kernel targets sm_80 and newer)";
    }
    e = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kCudaSharedMemoryBudget));
    return e == cudaSuccess ? std::string() : cudaErrorText("cudaFuncSetAttribute (shared memory)", e);
}

template <typename T, typename Tdt, bool kTensorCores>
std::string launchPlan(const HmScanShape& s, const CudaPlan& plan, const HmScanTensors& t, void* workspace,
    cudaStream_t stream)
{
    const Args<T, Tdt> a = makeArgs<T, Tdt>(s, plan, t, workspace);
    const int64_t heads = s.batch * s.heads;
    const auto stateKernel = chunkStateKernel<T, Tdt, kTensorCores>;
    const auto outputKernel = chunkOutputKernel<T, Tdt, kTensorCores>;
    std::string err = allowSharedMemory(stateKernel);
    if (err.empty())
    {
        err = allowSharedMemory(outputKernel);
    }
    if (!err.empty())
    {
        return err;
    }
    const dim3 chunkGrid(static_cast<unsigned>(heads * plan.numChunks), 1, 2);
    if (plan.numChunks > 0)
    {
        stateKernel<<<chunkGrid, kBlockThreads, plan.stateSmem.total, stream>>>(a, plan.stateSmem);
    }
    const int stateSize = static_cast<int>(s.headdim * s.dstate);
    const int blocksPerHead = (stateSize + kPassThreads - 1) / kPassThreads;
    statePassingKernel<<<dim3(static_cast<unsigned>(heads * blocksPerHead), 1, 2), kPassThreads, 0, stream>>>(
        a.chunkStates, a.chunkDecays, a.stateF0, a.stateB0, a.stateF, a.stateB, plan.numChunks, stateSize,
        blocksPerHead);
    if (plan.numChunks > 0)
    {
        outputKernel<<<dim3(static_cast<unsigned>(heads * plan.numChunks)), kBlockThreads, plan.outputSmem.total,
            stream>>>(a, plan.outputSmem);
    }
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? std::string() : cudaErrorText("kernel launch", e);
}

template <typename T, typename Tdt>
std::string launchTyped(const HmScanShape& s, const CudaPlan& plan, const HmScanTensors& t, void* workspace,
    cudaStream_t stream)
{
    if constexpr (!std::is_same<T, float>::value)
    {
        if (plan.tensorCores)
        {
            return launchPlan<T, Tdt, true>(s, plan, t, workspace, stream);
        }
    }
    return launchPlan<T, Tdt, false>(s, plan, t, workspace, stream);
}

template <typename T>
std::string dispatchDt(const HmScanShape& s, const CudaPlan& plan, HmDType dt, const HmScanTensors& t,
    void* workspace, cudaStream_t stream)
{
    if (dt == HM_FLOAT32)
    {
        return launchTyped<T, float>(s, plan, t, workspace, stream);
    }
    return launchTyped<T, T>(s, plan, t, workspace, stream);
}

} // namespace

bool cudaCompiled()
{
    return true;
}

std::string launchCuda(const HmScanShape& s, HmDType act, HmDType dt, const HmScanTensors& t, void* workspace,
    size_t workspaceBytes, HmCudaStream stream)
{
    std::string err = validateShape(s);
    if (err.empty())
    {
        err = validateDtypes(act, dt);
    }
    CudaPlan plan{};
    if (err.empty())
    {
        err = planCuda(s, act, &plan);
    }
    if (err.empty())
    {
        err = validatePointers(s, t);
    }
    if (err.empty() && workspaceBytes < plan.workspaceBytes)
    {
        err = "HydraScan CUDA kernel: workspace of " + std::to_string(workspaceBytes) + " bytes, need "
            + std::to_string(plan.workspaceBytes);
    }
    if (err.empty() && plan.workspaceBytes > 0 && workspace == nullptr)
    {
        err = "HydraScan CUDA kernel: workspace is NULL but the per-chunk states need "
            + std::to_string(plan.workspaceBytes) + " bytes";
    }
    if (!err.empty())
    {
        return err;
    }
    if (s.batch == 0)
    {
        return {}; // no blocks to launch; B = 0 means empty states too
    }
    const cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
    switch (act)
    {
    case HM_FLOAT32: return dispatchDt<float>(s, plan, dt, t, workspace, cs);
    case HM_FLOAT16: return dispatchDt<__half>(s, plan, dt, t, workspace, cs);
    case HM_BFLOAT16: return dispatchDt<__nv_bfloat16>(s, plan, dt, t, workspace, cs);
    }
    return "HydraScan CUDA kernel: unreachable dtype";
}

} // namespace hydra_scan
} // namespace hieramamba
