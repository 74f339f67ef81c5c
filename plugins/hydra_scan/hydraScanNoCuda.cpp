// Stand-ins for the CUDA entry points in a build without nvcc, so the C ABI stays the same and
// callers get a clear "unsupported" answer instead of a missing symbol.
#include "hydraScanKernel.h"

namespace hieramamba
{
namespace hydra_scan
{

bool cudaCompiled()
{
    return false;
}

std::string launchCuda(const HmScanShape&, HmDType, HmDType, const HmScanTensors&, void*, size_t, HmCudaStream)
{
    return "HydraScan: this hieramamba_plugins library was built without CUDA (nvcc not found or "
           "-DHIERAMAMBA_WITH_CUDA=OFF); rebuild with CUDA to use the GPU kernel";
}

} // namespace hydra_scan
} // namespace hieramamba
