// Runs the CUDA HydraScan kernel (hydraScanKernelDevice.cuh, the very source nvcc compiles) on the
// host: every CUDA thread of a block is a std::thread, __syncthreads is a std::barrier, warp
// shuffles go through a block-wide exchange buffer, atomicAdd is std::atomic_ref. Blocks run one
// after another. The results are compared with the CPU kernel.
//
// What this proves without a GPU: the kernel's indexing, tiling, P slicing, team reductions, the
// one-step shift, the state in/out and the fp16/bf16 workspace path for a range of launch plans.
// What it cannot prove: CUDA memory-model or performance behaviour, and real-hardware numerics
// (expf/log1pf ULPs, FMA contraction); those need a GPU run.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "../common/hmFloat16.h"

// ---- Emulated CUDA vocabulary (only what the kernel uses) ---------------------------------------
#define HM_CUDA_EMULATION 1
#define __global__
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

namespace emu
{

struct Block
{
    explicit Block(unsigned threads, size_t smemBytes)
        : barrier(static_cast<std::ptrdiff_t>(threads))
        , shared(smemBytes / sizeof(float) + 1)
        , exchange(threads)
    {
    }
    std::barrier<> barrier;
    std::vector<float> shared;
    std::vector<float> exchange;
};

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
thread_local dim3 blockDim;
thread_local Block* block = nullptr;

} // namespace emu

using emu::blockDim;
using emu::blockIdx;
using emu::threadIdx;

inline void __syncthreads()
{
    emu::block->barrier.arrive_and_wait();
}

// Valid because every thread of the block reaches each shuffle together (the kernel's control flow
// around its shuffles is block-uniform); lanes xor'ed by < 32 stay inside their warp.
inline float __shfl_xor_sync(unsigned /*mask*/, float v, int laneMask)
{
    emu::block->exchange[threadIdx.x] = v;
    __syncthreads();
    const float r = emu::block->exchange[threadIdx.x ^ static_cast<unsigned>(laneMask)];
    __syncthreads();
    return r;
}

inline float atomicAdd(float* address, float v)
{
    return std::atomic_ref<float>(*address).fetch_add(v);
}

template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b)
{
    return a < b ? a : b;
}

#define HM_DYNAMIC_SHARED(type, name) type* name = emu::block->shared.data()

#include "../hydra_scan/hydraScanKernelDevice.cuh"

namespace
{

using namespace hieramamba;
using namespace hieramamba::hydra_scan;

int gFailures = 0;

void launch(dim3 grid, dim3 blockSize, size_t smemBytes, const std::function<void()>& kernel)
{
    for (unsigned by = 0; by < grid.y; ++by)
    {
        for (unsigned bx = 0; bx < grid.x; ++bx)
        {
            emu::Block blk(blockSize.x, smemBytes);
            std::vector<std::thread> threads;
            for (unsigned tx = 0; tx < blockSize.x; ++tx)
            {
                threads.emplace_back([&, tx]() {
                    emu::threadIdx = dim3{tx, 0, 0};
                    emu::blockIdx = dim3{bx, by, 0};
                    emu::blockDim = blockSize;
                    emu::block = &blk;
                    kernel();
                });
            }
            for (auto& t : threads)
            {
                t.join();
            }
        }
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
// for T (float, __half, __nv_bfloat16).
template <typename T, typename Tdt, typename KT, typename KTdt>
void runCase(const char* name, HmScanShape s, bool withStates, int numSMs, double tol)
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

    // Emulated CUDA kernel, output pre-filled with garbage to catch rows it fails to write.
    std::vector<T> y(yRef.size(), fromFloat<T>(123.0f));
    std::vector<float> sf(sf0.size(), 7.0f), sb(sb0.size(), 7.0f);
    std::vector<float> workspace(cudaWorkspaceSize(s, act) / sizeof(float) + 1, 99.0f);
    HmScanTensors t = ref;
    t.y = y.data();
    t.state_f = sf.data();
    t.state_b = sb.data();
    device::Plan plan{};
    e = device::planFor(s, numSMs, &plan);
    if (!e.empty())
    {
        std::printf("FAIL %s: plan: %s\n", name, e.c_str());
        ++gFailures;
        return;
    }
    const auto args = device::makeArgs<KT, KTdt>(s, t, workspace.data());
    const dim3 grid{static_cast<unsigned>(s.batch * s.heads), static_cast<unsigned>(plan.pSlices), 1};
    const dim3 blockSize{static_cast<unsigned>(2 * plan.threadsPerDir), 1, 1};
    if (s.batch > 0)
    {
        launch(grid, blockSize, plan.smemBytes, [&]() { device::hydraScanSequentialKernel<KT, KTdt>(args, plan); });
    }

    const double ey = relErr(asFloat(y), asFloat(yRef));
    const double ef = relErr(sf, sfRef);
    const double eb = relErr(sb, sbRef);
    const bool ok = ey <= tol && ef <= tol && eb <= tol;
    std::printf("%s %-34s plan(K=%d tpd=%d rows=%d slices=%d tile=%d) rel.err y=%.2e sf=%.2e sb=%.2e\n",
        ok ? "ok  " : "FAIL", name, plan.team, plan.threadsPerDir, plan.rowsPerBlock, plan.pSlices, plan.tileSteps, ey,
        ef, eb);
    if (!ok)
    {
        ++gFailures;
    }
}

} // namespace

int main()
{
    using hieramamba::BFloat16;
    using hieramamba::Half;
    // Plans: numSMs=1 keeps 128 threads per direction; a large numSMs shrinks blocks to 32 threads per
    // direction and splits P over several blocks.
    runCase<float, float, float, float>("fp32 G=1 N=16 P=8 L=37 states", {2, 37, 2, 8, 1, 16}, true, 1, 1e-5);
    runCase<float, float, float, float>("fp32 G=2 N=40 P=70 L=150 slices", {1, 150, 2, 70, 2, 40}, true, 1000, 1e-5);
    runCase<float, float, float, float>("fp32 G=2 N=64 P=32 L=130 (tpd 128)", {1, 130, 4, 32, 2, 64}, false, 1, 1e-5);
    runCase<float, float, float, float>("fp32 N=512 P=3 L=9 (K=32)", {1, 9, 1, 3, 1, 512}, true, 1, 1e-5);
    runCase<float, float, float, float>("fp32 L=1", {2, 1, 2, 4, 1, 8}, true, 1, 1e-6);
    runCase<float, float, float, float>("fp32 L=2", {1, 2, 2, 4, 2, 8}, true, 1, 1e-6);
    runCase<float, float, float, float>("fp32 L=0 (states pass through)", {2, 0, 2, 4, 1, 8}, true, 1, 0.0);
    runCase<Half, float, __half, float>("fp16 x, fp32 dt, L=45", {2, 45, 2, 8, 1, 16}, true, 1000, 2e-3);
    runCase<Half, Half, __half, __half>("fp16 x, fp16 dt, L=20", {1, 20, 4, 8, 2, 24}, false, 1, 2e-3);
    runCase<BFloat16, float, __nv_bfloat16, float>("bf16 x, fp32 dt, L=33", {1, 33, 2, 12, 1, 16}, true, 1000, 1e-2);
    runCase<BFloat16, BFloat16, __nv_bfloat16, __nv_bfloat16>("bf16 x, bf16 dt, L=17", {2, 17, 2, 8, 2, 8}, true, 1,
        1e-2);
    std::printf("hydraScanCudaEmulationTest: %d failure(s)\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
