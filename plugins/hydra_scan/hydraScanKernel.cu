// CUDA HydraScan launcher: validates, plans (planCuda) and launches the three kernels of
// hydraScanKernelDevice.cuh (design notes there) on one stream.
#include "hydraScanKernelDevice.cuh"

#include <atomic>
#include <cstdint>

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

// Dynamic shared memory above 48 KiB must be opted into per kernel and device. The limit is set to
// the plan budget, not to one call's need: the attribute belongs to the kernel, so two threads
// enqueueing different shapes (two TensorRT execution contexts) cannot lower it under each other.
// Done once per device and kernel instantiation (`ready` bit d: device d is set up), so calls made
// later during a CUDA graph capture do not touch function attributes.
std::string allowSharedMemory(const void* const* kernels, int count, std::atomic<uint64_t>* ready)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
    {
        return cudaErrorText("querying the current device", e);
    }
    const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
    if (bit != 0 && (ready->load(std::memory_order_acquire) & bit) != 0)
    {
        return {};
    }
    int optin = 0;
    e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
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
    for (int i = 0; i < count; ++i)
    {
        e = cudaFuncSetAttribute(
            kernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kCudaSharedMemoryBudget));
        if (e != cudaSuccess)
        {
            return cudaErrorText("cudaFuncSetAttribute (shared memory)", e);
        }
    }
    ready->fetch_or(bit, std::memory_order_release);
    return {};
}

template <typename T, typename Tdt, bool kTensorCores>
std::string launchPlan(const HmScanShape& s, const CudaPlan& plan, const HmScanTensors& t, void* workspace,
    cudaStream_t stream)
{
    const Args<T, Tdt> a = makeArgs<T, Tdt>(s, plan, t, workspace);
    const int64_t heads = s.batch * s.heads;
    const auto stateKernel = chunkStateKernel<T, Tdt, kTensorCores>;
    const auto outputKernel = chunkOutputKernel<T, Tdt, kTensorCores>;
    static std::atomic<uint64_t> ready{0}; // one per instantiation, i.e. per kernel pair
    const void* kernels[] = {reinterpret_cast<const void*>(stateKernel), reinterpret_cast<const void*>(outputKernel)};
    const std::string err = allowSharedMemory(kernels, 2, &ready);
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
        const unsigned tiles = static_cast<unsigned>(heads * plan.numChunks * plan.tilesPerChunk);
        outputKernel<<<dim3(tiles), kBlockThreads, plan.outputSmem.total, stream>>>(a, plan.outputSmem);
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
    {
        // Set the attributes again next time: a context made after they were set (cudaDeviceReset,
        // a second driver-API context on the device) does not have them.
        ready.store(0, std::memory_order_release);
    }
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
