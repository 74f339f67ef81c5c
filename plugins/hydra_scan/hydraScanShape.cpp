// Shape, dtype and workspace rules of HydraScan, shared by every implementation.
#include "hydraScanKernel.h"

#include <cstring>
#include <limits>
#include <sstream>

namespace hieramamba
{
namespace hydra_scan
{
namespace
{

// Product of non-negative factors, or -1 when it would not fit in int64 (absurd shapes must fail
// validation rather than wrap around into a small allocation).
int64_t checkedProduct(std::initializer_list<int64_t> factors)
{
    int64_t result = 1;
    for (int64_t f : factors)
    {
        if (f < 0)
        {
            return -1;
        }
        if (f != 0 && result > std::numeric_limits<int64_t>::max() / 4 / f)
        {
            return -1;
        }
        result *= f;
    }
    return result;
}

} // namespace

const char* dtypeName(HmDType t)
{
    switch (t)
    {
    case HM_FLOAT32: return "float32";
    case HM_FLOAT16: return "float16";
    case HM_BFLOAT16: return "bfloat16";
    }
    return "unknown";
}

std::string validateShape(const HmScanShape& s)
{
    std::ostringstream err;
    const struct
    {
        const char* name;
        int64_t value;
        int64_t minimum;
    } dims[] = {{"batch (B)", s.batch, 0}, {"length (L)", s.length, 0}, {"heads (H)", s.heads, 1},
        {"headdim (P)", s.headdim, 1}, {"groups (G)", s.groups, 1}, {"dstate (N)", s.dstate, 1}};
    for (const auto& d : dims)
    {
        if (d.value < d.minimum)
        {
            err << "HydraScan: " << d.name << " must be >= " << d.minimum << ", got " << d.value;
            return err.str();
        }
    }
    if (s.heads % s.groups != 0)
    {
        err << "HydraScan: heads H=" << s.heads << " must be divisible by groups G=" << s.groups
            << " (head h uses B/C group h / (H/G))";
        return err.str();
    }
    // int32 limits keep index arithmetic simple on the GPU (grid dims, per-row offsets).
    const int64_t kMax32 = std::numeric_limits<int32_t>::max();
    if (s.heads > kMax32 || s.headdim > kMax32 || s.dstate > kMax32 || s.length > kMax32)
    {
        err << "HydraScan: L, H, P and N must each be < 2^31, got L=" << s.length << " H=" << s.heads
            << " P=" << s.headdim << " N=" << s.dstate;
        return err.str();
    }
    if (checkedProduct({s.batch, s.length, s.heads, s.headdim}) < 0
        || checkedProduct({s.batch, s.length, s.groups, s.dstate}) < 0
        || checkedProduct({s.batch, s.heads, s.headdim, s.dstate}) < 0)
    {
        err << "HydraScan: tensor sizes overflow int64 (B=" << s.batch << " L=" << s.length << " H=" << s.heads
            << " P=" << s.headdim << " G=" << s.groups << " N=" << s.dstate << ")";
        return err.str();
    }
    return {};
}

std::string validateDtypes(int actDtype, int dtDtype)
{
    std::ostringstream err;
    const bool actOk = actDtype == HM_FLOAT32 || actDtype == HM_FLOAT16 || actDtype == HM_BFLOAT16;
    if (!actOk)
    {
        err << "HydraScan: x/B/C/y dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16), got " << actDtype;
        return err.str();
    }
    // dt/A/dt_bias are either kept in fp32 (the precision-preserving export) or share the activation
    // type (a plain .half() model); other mixes would only multiply kernel instantiations.
    if (dtDtype != HM_FLOAT32 && dtDtype != actDtype)
    {
        err << "HydraScan: dt_f/dt_b/A/dt_bias dtype must be float32 or the x dtype ("
            << dtypeName(static_cast<HmDType>(actDtype)) << "), got code " << dtDtype;
        return err.str();
    }
    return {};
}

int64_t numel(const HmScanShape& s, const char* tensorName)
{
    const std::string n = tensorName;
    if (n == "x" || n == "y")
    {
        return s.batch * s.length * s.heads * s.headdim;
    }
    if (n == "dt_f" || n == "dt_b")
    {
        return s.batch * s.length * s.heads;
    }
    if (n == "A" || n == "dt_bias")
    {
        return s.heads;
    }
    if (n == "B_f" || n == "C_f" || n == "B_b" || n == "C_b")
    {
        return s.batch * s.length * s.groups * s.dstate;
    }
    if (n == "state_f0" || n == "state_b0" || n == "state_f" || n == "state_b")
    {
        return s.batch * s.heads * s.headdim * s.dstate;
    }
    return -1;
}

std::string validatePointers(const HmScanShape& s, const HmScanTensors& t)
{
    const struct
    {
        const char* name;
        const void* ptr;
    } required[] = {{"x", t.x}, {"dt_f", t.dt_f}, {"dt_b", t.dt_b}, {"A", t.A}, {"dt_bias", t.dt_bias},
        {"B_f", t.B_f}, {"C_f", t.C_f}, {"B_b", t.B_b}, {"C_b", t.C_b}, {"y", t.y}, {"state_f", t.state_f},
        {"state_b", t.state_b}};
    for (const auto& r : required)
    {
        if (r.ptr == nullptr && numel(s, r.name) > 0)
        {
            return std::string("HydraScan: pointer '") + r.name + "' is NULL but the tensor has "
                + std::to_string(numel(s, r.name)) + " elements";
        }
    }
    return {};
}

std::string validateCudaShape(const HmScanShape& s)
{
    if (s.dstate > kCudaMaxDstate)
    {
        return "HydraScan CUDA kernel: dstate N must be <= " + std::to_string(kCudaMaxDstate) + ", got "
            + std::to_string(s.dstate);
    }
    if (s.batch * s.heads > std::numeric_limits<int32_t>::max())
    {
        return "HydraScan CUDA kernel: B*H must be < 2^31 (one block row per batch and head), got "
            + std::to_string(s.batch * s.heads);
    }
    return {};
}

size_t cudaWorkspaceSize(const HmScanShape& s, HmDType act)
{
    if (act == HM_FLOAT32 || !validateShape(s).empty())
    {
        return 0;
    }
    const size_t bytes = static_cast<size_t>(s.batch * s.length * s.heads * s.headdim) * sizeof(float);
    return (bytes + 255) / 256 * 256; // TensorRT and cudaMalloc hand out 256-byte aligned blocks
}

} // namespace hydra_scan
} // namespace hieramamba
