// Runs the CUDA HydraScan kernels (hydraScanKernelDevice.cuh, the very source nvcc compiles) on the
// host: every CUDA thread of a block is a std::thread, __syncthreads is a std::barrier, warp
// shuffles go through a block-wide exchange buffer, wmma tiles are computed whole by every lane.
// Blocks run one after another, launches in stream order. The results are compared with the CPU
// kernel.
//
// What this proves without a GPU: the chunked algorithm (cumulative sums, decay masks, the one-step
// shift across chunk edges, partial chunks, state passing in both directions, states in/out), the
// indexing of every staged tile and GEMM operand layout, for tensor-core and FMA plans and chunk
// lengths 16/32/64. What it cannot prove: CUDA memory-model or performance behaviour, wmma's
// hardware rounding, and real-hardware numerics (expf/log1pf ULPs, FMA contraction); those need a
// GPU run.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "../common/hmFloat16.h"
#include "../hydra_scan/hydraScanPluginLogic.h"

#define HM_CUDA_EMULATION 1
#define __global__ inline
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3
{
    unsigned x = 1, y = 1, z = 1;
};

using __half = hieramamba::Half;
using __nv_bfloat16 = hieramamba::BFloat16;
inline float __half2float(__half v)
{
    return hieramamba::halfToFloat(v.bits);
}
inline float __bfloat162float(__nv_bfloat16 v)
{
    return hieramamba::bf16ToFloat(v.bits);
}
inline __half __float2half_rn(float v)
{
    return __half{hieramamba::floatToHalf(v)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float v)
{
    return __nv_bfloat16{hieramamba::floatToBf16(v)};
}

// ---- Emulated CUDA vocabulary (only what the kernels use) --------------------------------------
namespace emu
{

struct Block
{
    Block(unsigned threads, size_t smemBytes)
        : barrier(static_cast<std::ptrdiff_t>(threads))
        , shared(smemBytes / sizeof(double) + 1)
        , exchange(threads)
    {
    }
    std::barrier<> barrier;
    std::vector<double> shared; // 8-byte aligned; the kernels' buffers start at 128-byte offsets
    std::vector<float> exchange;
};

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;
thread_local Block* block = nullptr;

inline float asFloat(float v)
{
    return v;
}
inline float asFloat(hieramamba::Half v)
{
    return hieramamba::toFloat(v);
}
inline float asFloat(hieramamba::BFloat16 v)
{
    return hieramamba::toFloat(v);
}

// A shuffle: every lane publishes v, then reads lane `src(lane)` of its own warp. Valid because
// every thread of the block reaches each shuffle together (the kernels call them block-uniformly).
template <typename Src>
float shuffle(float v, Src src)
{
    block->exchange[threadIdx.x] = v;
    block->barrier.arrive_and_wait();
    const unsigned lane = threadIdx.x & 31u;
    const float r = block->exchange[(threadIdx.x & ~31u) + src(lane)];
    block->barrier.arrive_and_wait();
    return r;
}

} // namespace emu

using emu::blockDim;
using emu::blockIdx;
using emu::gridDim;
using emu::threadIdx;

inline void __syncthreads()
{
    emu::block->barrier.arrive_and_wait();
}

inline float __shfl_up_sync(unsigned /*mask*/, float v, int delta)
{
    return emu::shuffle(v, [&](unsigned lane) { return lane >= static_cast<unsigned>(delta) ? lane - delta : lane; });
}

inline float __shfl_sync(unsigned /*mask*/, float v, int srcLane)
{
    return emu::shuffle(v, [&](unsigned) { return static_cast<unsigned>(srcLane); });
}

template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b)
{
    return a < b ? a : b;
}

template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b)
{
    return a < b ? b : a;
}

// wmma: every emulated lane holds the whole 16x16 tile (the real distribution over lanes is
// unspecified, so the kernel cannot depend on it) and stores a 32nd of it. Products are exact in
// fp32 for fp16/bf16 operands and summed in fp32, as tensor cores do (up to summation order).
namespace nvcuda
{
namespace wmma
{
struct row_major
{
};
struct col_major
{
};
struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
enum layout_t
{
    mem_row_major,
    mem_col_major
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment
{
    static_assert(M == 16 && N == 16 && K == 16, "the kernel uses m16n16k16 only");
    float v[16 * 16];
};

template <typename Use, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const P* p, unsigned ldm)
{
    static_assert(std::is_same<T, P>::value, "wmma operand type mismatch");
    for (unsigned r = 0; r < 16; ++r)
    {
        for (unsigned c = 0; c < 16; ++c)
        {
            f.v[r * 16 + c] = emu::asFloat(std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r]);
        }
    }
}

inline void load_matrix_sync(
    fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout)
{
    for (unsigned r = 0; r < 16; ++r)
    {
        for (unsigned c = 0; c < 16; ++c)
        {
            f.v[r * 16 + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
        }
    }
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float value)
{
    std::fill(std::begin(f.v), std::end(f.v), value);
}

template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
    const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c)
{
    float out[16 * 16];
    for (int i = 0; i < 16; ++i)
    {
        for (int j = 0; j < 16; ++j)
        {
            float sum = c.v[i * 16 + j];
            for (int k = 0; k < 16; ++k)
            {
                sum += a.v[i * 16 + k] * b.v[k * 16 + j];
            }
            out[i * 16 + j] = sum;
        }
    }
    std::copy(std::begin(out), std::end(out), d.v);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout)
{
    // Each lane writes its own share of the tile, as on hardware, so a kernel that re-reads a tile
    // stored by other lanes without a barrier races here too.
    const unsigned lane = threadIdx.x & 31u;
    for (unsigned e = lane; e < 16 * 16; e += 32)
    {
        const unsigned r = e / 16;
        const unsigned c = e % 16;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[e];
    }
}
} // namespace wmma
} // namespace nvcuda

#define HM_DYNAMIC_SHARED(name) unsigned char* name = reinterpret_cast<unsigned char*>(emu::block->shared.data())

#include "../hydra_scan/hydraScanKernelDevice.cuh"

namespace
{

using namespace hieramamba;
using namespace hieramamba::hydra_scan;

int gFailures = 0;
bool gMultiTileOnly = false; // skip shapes of a single tile (the T > 1 runs)

// Runs every block of the grid, one after another; each block's threads run concurrently.
void launch(dim3 grid, unsigned threads, size_t smemBytes, const std::function<void()>& kernel)
{
    for (unsigned bz = 0; bz < grid.z; ++bz)
    {
        for (unsigned bx = 0; bx < grid.x; ++bx)
        {
            emu::Block blk(threads, smemBytes);
            std::vector<std::thread> pool;
            for (unsigned tx = 0; tx < threads; ++tx)
            {
                pool.emplace_back([&, tx]() {
                    emu::threadIdx = dim3{tx, 0, 0};
                    emu::blockIdx = dim3{bx, 0, bz};
                    emu::blockDim = dim3{threads, 1, 1};
                    emu::gridDim = grid;
                    emu::block = &blk;
                    kernel();
                });
            }
            for (auto& t : pool)
            {
                t.join();
            }
        }
    }
}

// The three launches of hydraScanKernel.cu's launchPlan.
template <typename KT, typename KTdt, bool kTC>
void runPlan(const HmScanShape& s, const CudaPlan& plan, const device::Args<KT, KTdt>& a)
{
    const unsigned heads = static_cast<unsigned>(s.batch * s.heads);
    const dim3 chunkGrid{heads * static_cast<unsigned>(plan.numChunks), 1, 2};
    if (plan.numChunks > 0)
    {
        launch(chunkGrid, device::kBlockThreads, plan.stateSmem.total,
            [&]() { device::chunkStateKernel<KT, KTdt, kTC>(a, plan.stateSmem); });
    }
    const int stateSize = static_cast<int>(s.headdim * s.dstate);
    const int blocksPerHead = (stateSize + device::kPassThreads - 1) / device::kPassThreads;
    launch(dim3{heads * blocksPerHead, 1, 2}, device::kPassThreads, 0, [&]() {
        device::statePassingKernel(a.chunkStates, a.chunkDecays, a.stateF0, a.stateB0, a.stateF, a.stateB,
            plan.numChunks, stateSize, blocksPerHead);
    });
    if (plan.numChunks > 0)
    {
        const unsigned tiles = heads * static_cast<unsigned>(plan.numChunks * plan.tilesPerChunk);
        launch(dim3{tiles, 1, 1}, device::kBlockThreads, plan.outputSmem.total,
            [&]() { device::chunkOutputKernel<KT, KTdt, kTC>(a, plan.outputSmem); });
    }
}

template <typename T>
std::vector<T> randomTensor(int64_t n, std::mt19937& rng, float scale = 1.0f)
{
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<T> v(static_cast<size_t>(n));
    for (auto& e : v)
    {
        e = fromFloat<T>(normal(rng));
    }
    return v;
}

float maxAbs(const std::vector<float>& v)
{
    float m = 0.0f;
    for (float e : v)
    {
        m = std::max(m, std::fabs(e));
    }
    return m;
}

template <typename T>
std::vector<float> asFloat(const std::vector<T>& v)
{
    std::vector<float> out;
    for (const T& e : v)
    {
        out.push_back(toFloat(e));
    }
    return out;
}

double relErr(const std::vector<float>& got, const std::vector<float>& want)
{
    double err = 0.0;
    for (size_t i = 0; i < want.size(); ++i)
    {
        err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
    const double scale = maxAbs(want);
    return scale > 0 ? err / scale : err;
}

// T: activation storage type (float, Half, BFloat16); Tdt: dt/A/dt_bias type; KT: the kernel's name
// for T (float, __half, __nv_bfloat16). expectTile 0: any tile. grantedWorkspace: the kernels get a
// workspace of exactly that many bytes (as a TensorRT engine hands enqueue what getWorkspaceSize
// asked for at build time) instead of the run-time plan's size plus a spare float.
template <typename T, typename Tdt, typename KT, typename KTdt>
void runCase(const char* name, HmScanShape s, bool withStates, int expectTile, bool expectTensorCores, double tol,
    const size_t* grantedWorkspace = nullptr)
{
    std::mt19937 rng(static_cast<unsigned>(s.length * 131 + s.dstate * 7 + s.headdim));
    auto x = randomTensor<T>(numel(s, "x"), rng);
    auto dtf = randomTensor<Tdt>(numel(s, "dt_f"), rng);
    auto dtb = randomTensor<Tdt>(numel(s, "dt_b"), rng);
    std::vector<Tdt> A, bias;
    for (int64_t h = 0; h < s.heads; ++h)
    {
        A.push_back(fromFloat<Tdt>(-0.25f * static_cast<float>(h + 1)));
        bias.push_back(fromFloat<Tdt>(h % 3 == 2 ? 21.0f : -1.0f + 0.5f * static_cast<float>(h)));
    }
    auto Bf = randomTensor<T>(numel(s, "B_f"), rng), Cf = randomTensor<T>(numel(s, "C_f"), rng);
    auto Bb = randomTensor<T>(numel(s, "B_b"), rng), Cb = randomTensor<T>(numel(s, "C_b"), rng);
    auto sf0 = randomTensor<float>(numel(s, "state_f0"), rng), sb0 = randomTensor<float>(numel(s, "state_b0"), rng);

    const HmDType act = std::is_same<T, float>::value ? HM_FLOAT32
        : std::is_same<T, Half>::value                ? HM_FLOAT16
                                                      : HM_BFLOAT16;
    const HmDType dtType = std::is_same<Tdt, float>::value ? HM_FLOAT32 : act;

    // Reference: the CPU kernel.
    std::vector<T> yRef(static_cast<size_t>(numel(s, "y")));
    std::vector<float> sfRef(sf0.size()), sbRef(sb0.size());
    HmScanTensors ref{x.data(), dtf.data(), dtb.data(), A.data(), bias.data(), Bf.data(), Cf.data(), Bb.data(),
        Cb.data(), withStates ? sf0.data() : nullptr, withStates ? sb0.data() : nullptr, yRef.data(), sfRef.data(),
        sbRef.data()};
    std::string e = runCpu(s, act, dtType, ref, 2);
    if (!e.empty())
    {
        std::printf("FAIL %s: CPU kernel: %s\n", name, e.c_str());
        ++gFailures;
        return;
    }

    // Emulated CUDA kernels; outputs and workspace pre-filled with garbage to catch what they miss.
    std::vector<T> y(yRef.size(), fromFloat<T>(123.0f));
    std::vector<float> sf(sf0.size(), 7.0f), sb(sb0.size(), 7.0f);
    CudaPlan plan{};
    e = planCuda(s, act, &plan);
    if (!e.empty())
    {
        std::printf("FAIL %s: plan: %s\n", name, e.c_str());
        ++gFailures;
        return;
    }
    if ((expectTile != 0 && plan.tile != expectTile) || plan.tensorCores != expectTensorCores)
    {
        std::printf("FAIL %s: plan tile=%d tensorCores=%d, expected %d/%d\n", name, plan.tile,
            plan.tensorCores ? 1 : 0, expectTile, expectTensorCores ? 1 : 0);
        ++gFailures;
    }
    if (gMultiTileOnly && (s.length + plan.tile - 1) / plan.tile < 2)
    {
        return;
    }
    // Exactly the granted bytes (256-byte multiples), so AddressSanitizer flags any write past them.
    std::vector<float> workspace(
        grantedWorkspace != nullptr ? *grantedWorkspace / sizeof(float) : plan.workspaceBytes / sizeof(float) + 1,
        99.0f);
    HmScanTensors t = ref;
    t.y = y.data();
    t.state_f = sf.data();
    t.state_b = sb.data();
    const auto args = device::makeArgs<KT, KTdt>(s, plan, t, workspace.data());
    if (s.batch > 0)
    {
        bool tensorCores = false;
        if constexpr (!std::is_same<KT, float>::value)
        {
            tensorCores = plan.tensorCores;
            if (tensorCores)
            {
                runPlan<KT, KTdt, true>(s, plan, args);
            }
        }
        if (!tensorCores)
        {
            runPlan<KT, KTdt, false>(s, plan, args);
        }
    }

    const double ey = relErr(asFloat(y), asFloat(yRef));
    const double ef = relErr(sf, sfRef);
    const double eb = relErr(sb, sbRef);
    const bool ok = ey <= tol && ef <= tol && eb <= tol;
    std::printf("%s %-40s plan(Q=%d T=%d chunks=%lld %s) rel.err y=%.2e sf=%.2e sb=%.2e\n", ok ? "ok  " : "FAIL",
        name, plan.tile, plan.tilesPerChunk, static_cast<long long>(plan.numChunks), plan.tensorCores ? "wmma" : "fma",
        ey, ef, eb);
    if (!ok)
    {
        ++gFailures;
    }
}

void runCases()
{
    using hieramamba::BFloat16;
    using hieramamba::Half;
    // Shapes {B, L, H, P, G, N}. Plans: fp32 (and 16-bit x with P or N not a multiple of 16) use FMA
    // GEMMs with fp32 operands; P = N = 64 then fits 32-step tiles, small P/N 64-step tiles and
    // P = N = 128 16-step tiles. 16-bit x with P, N multiples of 16 run on (emulated) tensor cores.
    runCase<float, float, float, float>("fp32 G=1 N=16 P=8 L=37 states", {2, 37, 2, 8, 1, 16}, true, 64, false, 1e-5);
    runCase<float, float, float, float>("fp32 G=2 N=40 P=60 L=150", {1, 150, 2, 60, 2, 40}, true, 64, false, 1e-5);
    runCase<float, float, float, float>("fp32 G=2 N=64 P=64 L=130 (Q=32)", {1, 130, 4, 64, 2, 64}, false, 32, false,
        1e-5);
    runCase<float, float, float, float>("fp32 N=128 P=128 L=40 (Q=16)", {1, 40, 1, 128, 1, 128}, true, 16, false, 1e-5);
    runCase<float, float, float, float>("fp32 N=5 P=3 L=64 (one full chunk)", {1, 64, 3, 3, 1, 5}, true, 64, false,
        1e-5);
    runCase<float, float, float, float>("fp32 L=65 (chunk of one step)", {1, 65, 2, 4, 2, 8}, true, 64, false, 1e-5);
    runCase<float, float, float, float>("fp32 L=700 (11 chunks: batched passing)", {1, 700, 2, 4, 1, 8}, true, 64,
        false, 1e-5);
    runCase<Half, float, __half, float>("fp16 L=1100 wmma (18 chunks)", {1, 1100, 1, 16, 1, 16}, true, 64, true, 4e-3);
    runCase<float, float, float, float>("fp32 L=1", {2, 1, 2, 4, 1, 8}, true, 64, false, 1e-6);
    runCase<float, float, float, float>("fp32 L=2", {1, 2, 2, 4, 2, 8}, true, 64, false, 1e-6);
    runCase<float, float, float, float>("fp32 L=0 (states pass through)", {2, 0, 2, 4, 1, 8}, true, 64, false, 0.0);
    runCase<Half, float, __half, float>("fp16 x, fp32 dt, P=N=64 L=150 wmma", {1, 150, 2, 64, 1, 64}, true, 64, true,
        4e-3);
    runCase<Half, Half, __half, __half>("fp16 x, fp16 dt, G=2 N=16 P=32 L=70 wmma", {2, 70, 4, 32, 2, 16}, false, 64,
        true, 4e-3);
    runCase<Half, float, __half, float>("fp16 x, P=8 N=16 L=45 (fma)", {2, 45, 2, 8, 1, 16}, true, 64, false, 2e-3);
    runCase<Half, float, __half, float>("fp16 x, L=1 wmma", {1, 1, 2, 16, 1, 16}, true, 64, true, 4e-3);
    runCase<BFloat16, float, __nv_bfloat16, float>("bf16 x, fp32 dt, P=N=32 L=100 wmma", {1, 100, 2, 32, 1, 32}, true,
        64, true, 3e-2);
    runCase<BFloat16, BFloat16, __nv_bfloat16, __nv_bfloat16>("bf16 x, bf16 dt, L=17 (fma)", {2, 17, 2, 8, 2, 8}, true,
        64, false, 1e-2);
}

// An engine built with the default setting (T = 1) and run with T = 2 and 4: the workspace is the
// one the build sized (the plugin's getWorkspaceSize for the profile's shape), the plan the run's.
// Shapes whose shared-memory plan drops to a smaller tile at larger T (16-bit x with P = 64,
// N = 128: 64-step tiles at T = 1 and 2, 32-step at T = 4; fp32 P = 32, N = 80: 64 at T = 1, 32 at
// T = 2 and 4) are the ones where a per-setting workspace would grow. Built with AddressSanitizer
// as its own CTest (hydra_scan_cuda_emulation_asan).
template <typename T, typename Tdt, typename KT, typename KTdt>
void runEngineCase(const char* name, HmScanShape s, bool expectTensorCores, double tol)
{
    const plugin::IoType io = std::is_same<T, float>::value ? plugin::IoType::kFLOAT32
        : std::is_same<T, Half>::value                      ? plugin::IoType::kFLOAT16
                                                            : plugin::IoType::kBFLOAT16;
    setenv(kTilesPerChunkEnv, "1", 1);
    const size_t granted = plugin::workspaceSize(
        plugin::Dims{s.batch, s.length, s.heads, s.headdim}, plugin::Dims{s.batch, s.length, s.groups, s.dstate}, io);
    if (granted == 0)
    {
        std::printf("FAIL %s: no workspace planned at build time\n", name);
        ++gFailures;
        return;
    }
    const HmDType act = static_cast<HmDType>(plugin::toDtypeCode(io));
    for (const char* tiles : {"2", "4"})
    {
        setenv(kTilesPerChunkEnv, tiles, 1);
        const std::string full = std::string(name) + " (built T=1, run T=" + tiles + ")";
        // What the plugin's enqueue decides before launching: the run's plan must fit the grant.
        const std::string refused = plugin::checkWorkspace(s, act, static_cast<int64_t>(granted));
        if (!refused.empty())
        {
            std::printf("FAIL %s: enqueue would refuse: %s\n", full.c_str(), refused.c_str());
            ++gFailures;
            continue;
        }
        runCase<T, Tdt, KT, KTdt>(full.c_str(), s, true, 0, expectTensorCores, tol, &granted);
    }
}

void runEngineCases()
{
    std::printf("-- engine workspace sized with %s=1, run with 2 and 4\n", kTilesPerChunkEnv);
    runEngineCase<Half, float, __half, float>("fp16 P=64 N=128 L=300 wmma", {1, 300, 1, 64, 1, 128}, true, 4e-3);
    runEngineCase<float, float, float, float>("fp32 P=32 N=80 L=300 G=2", {1, 300, 2, 32, 2, 80}, false, 1e-5);
}

} // namespace

int main(int argc, char** argv)
{
    if (argc > 1 && std::string(argv[1]) == "--engine-workspace")
    {
        runEngineCases(); // the AddressSanitizer build runs only these
        std::printf("hydraScanCudaEmulationTest --engine-workspace: %d failure(s)\n", gFailures);
        return gFailures == 0 ? 0 : 1;
    }
    if (argc > 1)
    {
        std::printf("usage: %s [--engine-workspace]\n", argv[0]);
        return 2;
    }
    // Every case with 1 tile per state chunk, then the shapes of several tiles with 2 and 4 (the
    // tuning knob planCuda reads).
    for (const char* tiles : {"1", "2", "4"})
    {
        setenv(kTilesPerChunkEnv, tiles, 1);
        gMultiTileOnly = std::string(tiles) != "1";
        std::printf("-- %s=%s\n", kTilesPerChunkEnv, tiles);
        runCases();
    }
    runEngineCases();
    setenv(kTilesPerChunkEnv, "3", 1);
    CudaPlan unused;
    if (planCuda(HmScanShape{1, 10, 1, 4, 1, 8}, HM_FLOAT32, &unused).find(kTilesPerChunkEnv) == std::string::npos)
    {
        std::printf("FAIL an invalid %s is not refused\n", kTilesPerChunkEnv);
        ++gFailures;
    }
    std::printf("hydraScanCudaEmulationTest: %d failure(s)\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
