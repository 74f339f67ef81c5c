// Device code of the CUDA HydraScan kernel: both directions and the one-step shift in one launch.
//
// Design (correctness first; a chunked tensor-core SSD version can replace the inner loop later):
//  * grid.x = batch x head, grid.y = slices of the head dimension P (state rows are independent, so
//    splitting P only repeats the cheap B/C/dt loads and gives the GPU enough blocks).
//  * block = two halves of `threadsPerDir` threads: the first half scans forward, the second half
//    backward, concurrently. No flips, no batch doubling.
//  * a state row S[p, :] (N floats) is spread over a team of K lanes of one warp, 16 registers each;
//    the contraction s_t[p] = S[p, :] . C_t is a register sum plus log2(K) shuffles.
//  * time is processed in tiles: x, B, C, delta and exp(delta*A) of a tile are staged in shared memory
//    (fp32), then every thread steps through the tile sequentially.
//  * output rows receive exactly two terms (forward s_{t-1}, backward s_{t+1}) added with atomicAdd
//    onto zero. Two addends onto an exact zero give fl(a+b) in either order, so the result is
//    deterministic. fp32 y accumulates in place; fp16/bf16 y go through an fp32 workspace.
//
// This header holds the kernel and its launch geometry; hydraScanKernel.cu launches it. It is a
// header so that plugins/tests/hydraScanCudaEmulationTest.cpp can also compile the very same kernel
// for the host (HM_CUDA_EMULATION: one std::thread per CUDA thread) and check it against the CPU
// kernel on machines without a GPU.
#pragma once

#include "hydraScanKernel.h"

#include <algorithm>
#include <string>
#include <type_traits>

#ifndef HM_CUDA_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define HM_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace hieramamba
{
namespace hydra_scan
{
namespace device
{

constexpr int kStatePerThread = 16; // state columns per thread: ~100 registers, no spills (ptxas -v)
static_assert(32 * kStatePerThread == kCudaMaxDstate, "kCudaMaxDstate must match the register layout");
constexpr int kMaxThreadsPerDir = 128;
constexpr int kMaxBlock = 2 * kMaxThreadsPerDir;
constexpr size_t kSmemBudget = 48 * 1024; // stay under the default limit: no opt-in attribute needed

__device__ __forceinline__ float toF(float v)
{
    return v;
}
__device__ __forceinline__ float toF(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toF(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

// fp32 y is accumulated in place and never converted, so only the 16-bit types need fromF.
template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ __half fromF<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromF<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

// softplus with mamba's threshold (identity above 20), in fp32 like the CPU kernel.
__device__ __forceinline__ float softplusF(float v)
{
    return v > 20.0f ? v : log1pf(expf(v));
}

struct Plan
{
    int team;          // K: lanes sharing one state row (power of two, <= 32)
    int threadsPerDir; // multiple of 32
    int rowsPerBlock;  // threadsPerDir / team
    int pSlices;       // grid.y
    int tileSteps;     // time steps staged per shared-memory tile
    size_t smemBytes;
};

template <typename T, typename Tdt>
struct Args
{
    const T* x;
    const Tdt* dtF;
    const Tdt* dtB;
    const Tdt* A;
    const Tdt* dtBias;
    const T* Bf;
    const T* Cf;
    const T* Bb;
    const T* Cb;
    const float* stateF0;
    const float* stateB0;
    T* y;
    float* acc; // fp32 accumulator [B,L,H,P]: y itself when T is float, else the workspace
    float* stateF;
    float* stateB;
    int64_t L;
    int H;
    int P;
    int G;
    int N;
};

template <typename T, typename Tdt>
__global__ void __launch_bounds__(kMaxBlock) hydraScanSequentialKernel(Args<T, Tdt> a, Plan plan)
{
    const int tpd = plan.threadsPerDir;
    const int dir = threadIdx.x / tpd; // warp-uniform: tpd is a multiple of 32
    const int i = threadIdx.x - dir * tpd;
    const int K = plan.team;
    const int member = i & (K - 1);
    const int rowLocal = i / K;
    const int rowsPerBlock = plan.rowsPerBlock;

    const int64_t bh = blockIdx.x;
    const int64_t b = bh / a.H;
    const int h = static_cast<int>(bh % a.H);
    const int g = h / (a.H / a.G);
    const int p0 = blockIdx.y * rowsPerBlock;
    const int rowsHere = min(rowsPerBlock, a.P - p0);
    const int p = p0 + rowLocal;
    const bool rowActive = rowLocal < rowsHere;
    const int64_t L = a.L;
    const int N = a.N;

    // Shared memory per direction: [delta TT][decay TT][x TT*rows][B TT*N][C TT*N].
    const int TT = plan.tileSteps;
    HM_DYNAMIC_SHARED(float, smem);
    float* base = smem + static_cast<size_t>(dir) * TT * (2 + rowsPerBlock + 2 * N);
    float* deltaS = base;
    float* decayS = deltaS + TT;
    float* xS = decayS + TT;
    float* bS = xS + TT * rowsPerBlock;
    float* cS = bS + TT * N;

    // 1. Zero this block's slice of the accumulator (it owns rows p0..p0+rowsHere of head (b,h)).
    const int64_t rowStride = static_cast<int64_t>(a.H) * a.P; // y[b, t+1, h, p] - y[b, t, h, p]
    float* accBase = a.acc + (b * L * a.H + h) * a.P + p0;
    for (int64_t e = threadIdx.x; e < L * rowsHere; e += blockDim.x)
    {
        accBase[(e / rowsHere) * rowStride + e % rowsHere] = 0.0f;
    }

    // 2. Initial state into registers.
    const float* init = dir == 0 ? a.stateF0 : a.stateB0;
    const int64_t stateRow = ((b * a.H + h) * a.P + p) * static_cast<int64_t>(N);
    float S[kStatePerThread];
#pragma unroll
    for (int j = 0; j < kStatePerThread; ++j)
    {
        const int n = member + j * K;
        S[j] = (init != nullptr && rowActive && n < N) ? init[stateRow + n] : 0.0f;
    }

    const Tdt* dt = dir == 0 ? a.dtF : a.dtB;
    const T* Bm = dir == 0 ? a.Bf : a.Bb;
    const T* Cm = dir == 0 ? a.Cf : a.Cb;
    const float A = toF(a.A[h]);
    const float bias = toF(a.dtBias[h]);

    __syncthreads(); // the zeroed accumulator must be visible before any atomicAdd of step 3

    // 3. Scan. Both halves walk the same number of tiles, so __syncthreads stays uniform.
    for (int64_t tileStart = 0; tileStart < L; tileStart += TT)
    {
        const int steps = static_cast<int>(min(static_cast<int64_t>(TT), L - tileStart));
        // Step j of this tile is time t = tileStart + j (forward) or L-1-(tileStart + j) (backward).
        for (int e = i; e < steps; e += tpd)
        {
            const int64_t t = dir == 0 ? tileStart + e : L - 1 - (tileStart + e);
            const float delta = softplusF(toF(dt[(b * L + t) * a.H + h]) + bias);
            deltaS[e] = delta;
            decayS[e] = expf(delta * A);
        }
        for (int e = i; e < steps * rowsHere; e += tpd)
        {
            const int j = e / rowsHere;
            const int r = e - j * rowsHere;
            const int64_t t = dir == 0 ? tileStart + j : L - 1 - (tileStart + j);
            xS[j * rowsPerBlock + r] = toF(a.x[((b * L + t) * a.H + h) * a.P + p0 + r]);
        }
        for (int e = i; e < steps * N; e += tpd)
        {
            const int j = e / N;
            const int n = e - j * N;
            const int64_t t = dir == 0 ? tileStart + j : L - 1 - (tileStart + j);
            const int64_t src = ((b * L + t) * a.G + g) * N + n;
            bS[j * N + n] = toF(Bm[src]);
            cS[j * N + n] = toF(Cm[src]);
        }
        __syncthreads();

        for (int j = 0; j < steps; ++j)
        {
            const float decay = decayS[j];
            const float u = rowActive ? deltaS[j] * xS[j * rowsPerBlock + rowLocal] : 0.0f;
            const float* bRow = bS + j * N;
            const float* cRow = cS + j * N;
            float part = 0.0f;
#pragma unroll
            for (int jj = 0; jj < kStatePerThread; ++jj)
            {
                const int n = member + jj * K;
                if (n < N)
                {
                    const float v = fmaf(decay, S[jj], u * bRow[n]);
                    S[jj] = v;
                    part = fmaf(v, cRow[n], part);
                }
            }
            // Team reduction; every lane of the warp takes part (inactive rows carry zeros).
            for (int off = K >> 1; off > 0; off >>= 1)
            {
                part += __shfl_xor_sync(0xffffffffu, part, off);
            }
            const int64_t t = dir == 0 ? tileStart + j : L - 1 - (tileStart + j);
            const int64_t tOut = dir == 0 ? t + 1 : t - 1; // the one-step shift
            if (member == 0 && rowActive && tOut >= 0 && tOut < L)
            {
                atomicAdd(accBase + tOut * rowStride + rowLocal, part);
            }
        }
        __syncthreads(); // the next tile overwrites shared memory
    }

    // 4. Final states: S^f_{L-1} and S^b_0.
    float* finalState = dir == 0 ? a.stateF : a.stateB;
#pragma unroll
    for (int j = 0; j < kStatePerThread; ++j)
    {
        const int n = member + j * K;
        if (rowActive && n < N)
        {
            finalState[stateRow + n] = S[j];
        }
    }

    // 5. fp16/bf16 output: convert the finished fp32 sums (the loop's last __syncthreads made every
    // atomicAdd of this block visible to the whole block).
    if constexpr (!std::is_same<T, float>::value)
    {
        T* yBase = a.y + (b * L * a.H + h) * a.P + p0;
        for (int64_t e = threadIdx.x; e < L * rowsHere; e += blockDim.x)
        {
            const int64_t off = (e / rowsHere) * rowStride + e % rowsHere;
            yBase[off] = fromF<T>(accBase[off]);
        }
    }
}

// Typed kernel arguments. fp32 y is its own accumulator; 16-bit y accumulates in the workspace.
template <typename T, typename Tdt>
Args<T, Tdt> makeArgs(const HmScanShape& s, const HmScanTensors& t, void* workspace)
{
    Args<T, Tdt> a{};
    a.x = static_cast<const T*>(t.x);
    a.dtF = static_cast<const Tdt*>(t.dt_f);
    a.dtB = static_cast<const Tdt*>(t.dt_b);
    a.A = static_cast<const Tdt*>(t.A);
    a.dtBias = static_cast<const Tdt*>(t.dt_bias);
    a.Bf = static_cast<const T*>(t.B_f);
    a.Cf = static_cast<const T*>(t.C_f);
    a.Bb = static_cast<const T*>(t.B_b);
    a.Cb = static_cast<const T*>(t.C_b);
    a.stateF0 = t.state_f0;
    a.stateB0 = t.state_b0;
    a.y = static_cast<T*>(t.y);
    a.acc = std::is_same<T, float>::value ? static_cast<float*>(t.y) : static_cast<float*>(workspace);
    a.stateF = t.state_f;
    a.stateB = t.state_b;
    a.L = s.length;
    a.H = static_cast<int>(s.heads);
    a.P = static_cast<int>(s.headdim);
    a.G = static_cast<int>(s.groups);
    a.N = static_cast<int>(s.dstate);
    return a;
}

// Launch geometry for a shape on a GPU with numSMs multiprocessors (pure host logic).
inline std::string planFor(const HmScanShape& s, int numSMs, Plan* plan)
{
    int K = 1;
    while (static_cast<int64_t>(K) * kStatePerThread < s.dstate)
    {
        K *= 2;
    }
    if (K > 32)
    {
        return "HydraScan CUDA kernel: dstate N=" + std::to_string(s.dstate) + " exceeds "
            + std::to_string(32 * kStatePerThread);
    }

    // Start from 128 threads per direction; halve while that leaves SMs idle or rows empty.
    const int64_t heads = s.batch * s.heads;
    int tpd = kMaxThreadsPerDir;
    auto slices = [&](int t) { return (s.headdim + t / K - 1) / (t / K); };
    while (tpd > 32 && (heads * slices(tpd) < 2LL * numSMs || tpd / 2 / K >= s.headdim))
    {
        tpd /= 2;
    }
    const int rows = tpd / K;
    int tile = 64;
    auto smemFor = [&](int tt) {
        return 2 * static_cast<size_t>(tt) * (2 + rows + 2 * static_cast<size_t>(s.dstate)) * sizeof(float);
    };
    while (tile > 1 && smemFor(tile) > kSmemBudget)
    {
        tile /= 2;
    }
    const int64_t pSlices = slices(tpd);
    if (pSlices > 65535)
    {
        return "HydraScan CUDA kernel: headdim P=" + std::to_string(s.headdim) + " needs more than 65535 blocks";
    }
    *plan = Plan{K, tpd, rows, static_cast<int>(pSlices), tile, smemFor(tile)};
    return {};
}

} // namespace device
} // namespace hydra_scan
} // namespace hieramamba
