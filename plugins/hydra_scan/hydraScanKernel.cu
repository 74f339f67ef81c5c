// CUDA HydraScan launcher: validates, picks the launch geometry for the current GPU and launches the
// kernel of hydraScanKernelDevice.cuh (design notes there) once for both directions.
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

std::string makePlan(const HmScanShape& s, Plan* plan)
{
    int dev = 0;
    int numSMs = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
    {
        e = cudaDeviceGetAttribute(&numSMs, cudaDevAttrMultiProcessorCount, dev);
    }
    if (e != cudaSuccess)
    {
        return cudaErrorText("querying the current device", e);
    }
    return planFor(s, numSMs, plan);
}

template <typename T, typename Tdt>
std::string launchTyped(const HmScanShape& s, const HmScanTensors& t, void* workspace, cudaStream_t stream)
{
    Plan plan{};
    std::string err = makePlan(s, &plan);
    if (!err.empty())
    {
        return err;
    }
    const Args<T, Tdt> a = makeArgs<T, Tdt>(s, t, workspace);

    const dim3 grid(static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(plan.pSlices));
    const dim3 block(static_cast<unsigned>(2 * plan.threadsPerDir));
    hydraScanSequentialKernel<T, Tdt><<<grid, block, plan.smemBytes, stream>>>(a, plan);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? std::string() : cudaErrorText("kernel launch", e);
}

template <typename T>
std::string dispatchDt(
    const HmScanShape& s, HmDType dt, const HmScanTensors& t, void* workspace, cudaStream_t stream)
{
    if (dt == HM_FLOAT32)
    {
        return launchTyped<T, float>(s, t, workspace, stream);
    }
    return launchTyped<T, T>(s, t, workspace, stream);
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
    if (err.empty())
    {
        err = validateCudaShape(s);
    }
    if (err.empty())
    {
        err = validatePointers(s, t);
    }
    if (err.empty() && workspaceBytes < cudaWorkspaceSize(s, act))
    {
        err = "HydraScan CUDA kernel: workspace of " + std::to_string(workspaceBytes) + " bytes, need "
            + std::to_string(cudaWorkspaceSize(s, act));
    }
    if (err.empty() && act != HM_FLOAT32 && cudaWorkspaceSize(s, act) > 0 && workspace == nullptr)
    {
        err = "HydraScan CUDA kernel: workspace is NULL but fp16/bf16 output needs an fp32 accumulator";
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
    case HM_FLOAT32: return dispatchDt<float>(s, dt, t, workspace, cs);
    case HM_FLOAT16: return dispatchDt<__half>(s, dt, t, workspace, cs);
    case HM_BFLOAT16: return dispatchDt<__nv_bfloat16>(s, dt, t, workspace, cs);
    }
    return "HydraScan CUDA kernel: unreachable dtype";
}

} // namespace hydra_scan
} // namespace hieramamba
