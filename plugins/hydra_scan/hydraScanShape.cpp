// Shape, dtype and workspace rules of HydraScan, shared by every implementation.
#include "hydraScanKernel.h"

#include <algorithm>
#include <cstdlib>
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

namespace
{

size_t alignUp(size_t bytes, size_t to)
{
    return (bytes + to - 1) / to * to;
}

// Buffers start 128-byte aligned (wmma needs 32 bytes; 128 keeps rows of tiles apart in banks).
size_t carve(size_t* cursor, size_t bytes)
{
    const size_t at = *cursor;
    *cursor += alignUp(bytes, 128);
    return at;
}

// Shared-memory carve-ups for tile length q and chunk length `steps` (sizes in bytes; op = staged
// operand element size).
void layoutSmem(CudaPlan* p, size_t q, size_t steps, size_t P, size_t N)
{
    const size_t op = p->operandBytes;
    const size_t totals = kCudaMaxTilesPerChunk * sizeof(float); // one per tile of the chunk
    size_t c = 0;
    p->stateSmem.x = carve(&c, q * P * op);
    p->stateSmem.b = carve(&c, q * N * op);
    p->stateSmem.state = carve(&c, P * N * sizeof(float));
    p->stateSmem.scan = carve(&c, 4 * steps * sizeof(float) + totals); // delta, prefix, suffix, weight
    p->stateSmem.total = c;

    c = 0;
    p->outputSmem.x = carve(&c, q * P * op);
    p->outputSmem.c = carve(&c, q * N * op);
    p->outputSmem.b = carve(&c, q * N * op);
    p->outputSmem.state = carve(&c, P * N * op);
    p->outputSmem.g = carve(&c, q * q * sizeof(float));
    p->outputSmem.m = carve(&c, q * q * op);
    p->outputSmem.y = carve(&c, q * P * sizeof(float));
    p->outputSmem.scan = carve(&c, 3 * steps * sizeof(float) + totals); // delta, prefix, suffix
    p->outputSmem.total = c;
}

std::string tilesPerChunkSetting(int* tiles)
{
    const char* env = std::getenv(kTilesPerChunkEnv);
    const std::string value = env != nullptr ? env : "";
    if (value.empty() || value == "1")
    {
        *tiles = 1;
    }
    else if (value == "2" || value == "4")
    {
        *tiles = value == "2" ? 2 : 4;
    }
    else
    {
        return std::string("HydraScan CUDA kernel: ") + kTilesPerChunkEnv + " must be 1, 2 or 4, got '" + value + "'";
    }
    return {};
}

// The setting-dependent part of a plan: tile (the largest whose shared memory fits), carve-ups,
// chunk length and count, and the grid limit. Leaves the workspace fields alone.
std::string planTiles(const HmScanShape& s, HmDType act, int tilesPerChunk, CudaPlan* plan)
{
    CudaPlan p{};
    p.tilesPerChunk = tilesPerChunk;
    p.tensorCores = act != HM_FLOAT32 && s.headdim % 16 == 0 && s.dstate % 16 == 0;
    p.operandBytes = p.tensorCores ? 2 : sizeof(float);
    // Tiles of at most 64 steps: the device's scans hold two steps per warp lane, one warp per tile.
    for (int q : {64, 32, 16})
    {
        layoutSmem(&p, static_cast<size_t>(q), static_cast<size_t>(q * p.tilesPerChunk),
            static_cast<size_t>(s.headdim), static_cast<size_t>(s.dstate));
        if (std::max(p.stateSmem.total, p.outputSmem.total) <= kCudaSharedMemoryBudget)
        {
            p.tile = q;
            break;
        }
    }
    if (p.tile == 0)
    {
        return "HydraScan CUDA kernel: headdim P=" + std::to_string(s.headdim) + " and dstate N="
            + std::to_string(s.dstate) + " need " + std::to_string(p.outputSmem.total)
            + " bytes of shared memory per block even with 16-step tiles (" + std::to_string(tilesPerChunk)
            + " tile(s) per state chunk); the budget is " + std::to_string(kCudaSharedMemoryBudget)
            + " (P, N <= 128 always fit)";
    }
    p.chunk = p.tile * p.tilesPerChunk;
    p.numChunks = (s.length + p.chunk - 1) / p.chunk;
    // Blocks are numbered (batch*head, tile) on grid.x, which holds up to 2^31 - 1; the output
    // kernel has a block for every tile of every chunk, the last chunk's past-the-end tiles included.
    const int64_t outputBlocks = p.numChunks * p.tilesPerChunk;
    const int64_t stateBlocks = (s.headdim * s.dstate + 255) / 256;
    if (s.batch * s.heads > std::numeric_limits<int32_t>::max() / std::max<int64_t>({outputBlocks, stateBlocks, 1}))
    {
        return "HydraScan CUDA kernel: B*H*tiles = " + std::to_string(s.batch * s.heads) + "*"
            + std::to_string(outputBlocks) + " blocks exceed the grid limit 2^31-1";
    }
    *plan = p;
    return {};
}

// Chunk slots per (direction, batch*head) in the workspace: the most chunks any setting that can
// run the shape makes, so the size depends on shape and dtype only and a workspace sized by one
// process (a TensorRT engine's build) holds the plan of another with any kTilesPerChunkEnv. For
// every P, N <= 128 that is T = 1's count (its chunks are the shortest; hydraScanLogicTest checks
// it), but it is computed here, not assumed. -1 when no setting can run the shape.
int64_t workspaceChunkSlots(const HmScanShape& s, HmDType act)
{
    int64_t slots = -1;
    for (int tiles : kCudaTilesPerChunkSettings)
    {
        CudaPlan p;
        if (planTiles(s, act, tiles, &p).empty())
        {
            slots = std::max(slots, p.numChunks);
        }
    }
    return slots;
}

// Workspace layout for `slots` chunks per (direction, batch*head); 256-byte multiples (TensorRT and
// cudaMalloc hand out 256-byte aligned blocks).
void layoutWorkspace(const HmScanShape& s, int64_t slots, CudaPlan* p)
{
    const size_t perDir = static_cast<size_t>(s.batch * s.heads * slots);
    p->chunkStatesOffset = 0;
    p->chunkDecaysOffset = alignUp(2 * perDir * static_cast<size_t>(s.headdim * s.dstate) * sizeof(float), 256);
    p->workspaceBytes = perDir == 0 ? 0 : p->chunkDecaysOffset + alignUp(2 * perDir * sizeof(float), 256);
}

} // namespace

std::string planCudaWithTiles(const HmScanShape& s, HmDType act, int tilesPerChunk, CudaPlan* plan)
{
    if (std::find(std::begin(kCudaTilesPerChunkSettings), std::end(kCudaTilesPerChunkSettings), tilesPerChunk)
        == std::end(kCudaTilesPerChunkSettings))
    {
        return "HydraScan CUDA kernel: tiles per state chunk must be 1, 2 or 4, got " + std::to_string(tilesPerChunk);
    }
    CudaPlan p{};
    const std::string err = planTiles(s, act, tilesPerChunk, &p);
    if (!err.empty())
    {
        return err;
    }
    // This setting plans the shape, so the maximum over settings is at least its chunk count.
    layoutWorkspace(s, workspaceChunkSlots(s, act), &p);
    *plan = p;
    return {};
}

std::string planCuda(const HmScanShape& s, HmDType act, CudaPlan* plan)
{
    int tiles = 1;
    const std::string err = tilesPerChunkSetting(&tiles);
    return err.empty() ? planCudaWithTiles(s, act, tiles, plan) : err;
}

std::string validateCudaShape(const HmScanShape& s, HmDType act)
{
    CudaPlan unused;
    return planCuda(s, act, &unused);
}

size_t cudaWorkspaceSize(const HmScanShape& s, HmDType act)
{
    if (!validateShape(s).empty())
    {
        return 0;
    }
    const int64_t slots = workspaceChunkSlots(s, act); // independent of kTilesPerChunkEnv
    if (slots < 0)
    {
        return 0;
    }
    CudaPlan p;
    layoutWorkspace(s, slots, &p);
    return p.workspaceBytes;
}

} // namespace hydra_scan
} // namespace hieramamba
