// Device code of the CUDA HydraScan kernel: the chunked SSD scan, both directions and the one-step
// shift, without flips or batch doubling.
//
// Math (per batch b, head h; REFERENCE §7, README "CUDA kernel"). Time is cut into chunks of
// Q steps (CudaPlan::chunk). In chunk [t0, t0+Q), with a_i = A·Δ_i (0 past the end of the video),
// pre_i = Σ_{r<=i} a_r and suf_i = Σ_{r>=i} a_r (both within the chunk):
//   forward  y_fw[t0+i] = e^{pre_{i-1}} C^f_{t0+i-1}·S^f_in + Σ_{j<i} e^{pre_{i-1}-pre_j} (C^f_{t0+i-1}·B^f_j) Δ^f_j x_j
//   backward y_bw[t0+i] = e^{suf_{i+1}} C^b_{t0+i+1}·S^b_in + Σ_{j>i} e^{suf_{i+1}-suf_j} (C^b_{t0+i+1}·B^b_j) Δ^b_j x_j
// where S^f_in is the forward state entering the chunk from the left and S^b_in the backward state
// entering from the right. The query row is C at the neighbouring step: that is the shift. Rows
// whose neighbour lies outside [0, L) get a zero query (y_fw[0] = y_bw[L-1] = 0 as in the CPU kernel).
//
// Three launches, each with blockIdx.z = direction (0 forward, 1 backward):
//  1. chunkStateKernel, one block per (b·h, chunk): the state a chunk adds on its own,
//     S_loc = Σ_j w_j x_j ⊗ B_j with w_j = Δ_j e^{suf_{j+1}} (forward) or Δ_j e^{pre_{j-1}} (backward),
//     and the chunk's decay e^{Σ a}. Written to the workspace.
//  2. statePassingKernel, one thread per state element: walks the chunks in scan order and replaces
//     each S_loc by the state entering that chunk (S_in = decay·S_in + S_loc, fp32), then writes the
//     final states. The only sequential part, O(L/Q) per element.
//  3. chunkOutputKernel, one block per (b·h, chunk), both directions in turn: the formulas above,
//     summed in shared memory and written to y once (no atomics, deterministic).
// The intra-chunk products (X^T·W·B, C·B^T, M·X, C·S^T) are block GEMMs on staged shared-memory
// tiles: wmma (tensor cores, fp32 accumulate) when x is fp16/bf16 and P, N are multiples of 16,
// fp32 FMA otherwise. Δ, the cumulative sums, exponentials, decays and states stay fp32 (on tensor
// cores the entering state is rounded to x's type only as an operand of C·S^T, as in mamba-ssm).
//
// This is a header so that plugins/tests/hydraScanCudaEmulationTest.cpp can compile the very same
// kernels for the host (HM_CUDA_EMULATION: one std::thread per CUDA thread) and check them against
// the CPU kernel on machines without a GPU.
#pragma once

#include "hydraScanKernel.h"

#include <algorithm>
#include <string>
#include <type_traits>

#ifndef HM_CUDA_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define HM_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the HydraScan CUDA kernel needs sm_80 or newer (bf16 wmma, 99 KiB of shared memory per block): set CMAKE_CUDA_ARCHITECTURES to 80 or above"
#endif
#endif

namespace hieramamba
{
namespace hydra_scan
{
namespace device
{

constexpr int kBlockThreads = 128; // chunk kernels: 4 warps
constexpr int kPassThreads = 256;  // state passing: one thread per state element

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

template <typename T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v)
{
    return v;
}
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

// Staged operand type: x's type on tensor cores, fp32 otherwise.
template <typename T, bool kTensorCores>
using Operand = typename std::conditional<kTensorCores, T, float>::type;

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
    float* stateF;
    float* stateB;
    float* chunkStates; // workspace [2, B*H, chunks, P, N]
    float* chunkDecays; // workspace [2, B*H, chunks]
    int64_t L;
    int64_t numChunks;
    int H;
    int P;
    int G;
    int N;
    int Q;
};

// Inclusive prefix sum over the 32 lanes of a warp.
__device__ __forceinline__ float warpInclusiveScan(float v)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1)
    {
        const float n = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off)
        {
            v += n;
        }
    }
    return v;
}

// Δ of the chunk's steps (0 past `valid`) and, with a = A·Δ, the inclusive prefix sums pre[i] and
// suffix sums suf[i] over the chunk (Q <= 64: two steps per lane). Every thread of the block calls
// it (shuffles, __syncthreads); every warp computes the same sums and warp 0 stores them.
template <typename Tdt>
__device__ void chunkScans(const Tdt* dt, int64_t firstIndex, int64_t stride, int valid, int Q, float A,
    float bias, float* delta, float* pre, float* suf)
{
    for (int i = threadIdx.x; i < Q; i += blockDim.x)
    {
        delta[i] = i < valid ? softplusF(toF(dt[firstIndex + i * stride]) + bias) : 0.0f;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const bool lo = lane < Q;
    const bool hi = lane + 32 < Q;
    // prefix over steps lane and lane + 32; suffix over steps Q-1-lane and Q-33-lane
    const float p0 = warpInclusiveScan(lo ? A * delta[lane] : 0.0f);
    const float p1 = warpInclusiveScan(hi ? A * delta[lane + 32] : 0.0f) + __shfl_sync(0xffffffffu, p0, 31);
    const float s0 = warpInclusiveScan(lo ? A * delta[Q - 1 - lane] : 0.0f);
    const float s1 = warpInclusiveScan(hi ? A * delta[Q - 33 - lane] : 0.0f) + __shfl_sync(0xffffffffu, s0, 31);
    if (threadIdx.x < 32)
    {
        if (lo)
        {
            pre[lane] = p0;
            suf[Q - 1 - lane] = s0;
        }
        if (hi)
        {
            pre[lane + 32] = p1;
            suf[Q - 33 - lane] = s1;
        }
    }
    __syncthreads();
}

// One product A[M x K] · B[K x Nc] of shared-memory tiles for blockGemm. A is row-major (element
// (i,k) at A[i*lda + k]) or column-major (A[k*lda + i]); likewise B.
template <typename Op, bool kARowMajor, bool kBRowMajor>
struct Product
{
    const Op* A;
    int lda;
    const Op* B;
    int ldb;
    int K;

    // Adds this product's 16x16 tile at (i0, j0) to a wmma accumulator (tensor cores).
    template <typename Acc>
    __device__ void mmaTile(Acc& acc, int i0, int j0) const
    {
        namespace wmma = nvcuda::wmma;
        using LayoutA = typename std::conditional<kARowMajor, wmma::row_major, wmma::col_major>::type;
        using LayoutB = typename std::conditional<kBRowMajor, wmma::row_major, wmma::col_major>::type;
        for (int k0 = 0; k0 < K; k0 += 16)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, Op, LayoutA> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, LayoutB> fb;
            wmma::load_matrix_sync(fa, kARowMajor ? A + i0 * lda + k0 : A + k0 * lda + i0, lda);
            wmma::load_matrix_sync(fb, kBRowMajor ? B + k0 * ldb + j0 : B + j0 * ldb + k0, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
    }

    // Element (i, j) of the product added to sum, in fp32 FMA.
    __device__ float dot(float sum, int i, int j) const
    {
        for (int k = 0; k < K; ++k)
        {
            const float av = toF(kARowMajor ? A[i * lda + k] : A[k * lda + i]);
            const float bv = toF(kBRowMajor ? B[k * ldb + j] : B[j * ldb + k]);
            sum = fmaf(av, bv, sum);
        }
        return sum;
    }
};

// C[M x Nc] (fp32, row-major, ldc, shared memory) = (accumulate ? C : 0) + the sum of the products.
// Every thread of the block calls it. On tensor cores each warp owns whole 16x16 tiles of C and
// keeps a tile's sum in registers until its single store (the lane layout of wmma fragments is
// unspecified, so a tile is never re-read by the warp that stored it without a barrier).
template <typename Op, bool kTensorCores, typename... Products>
__device__ void blockGemm(int M, int Nc, float* C, int ldc, bool accumulate, const Products&... products)
{
    if constexpr (kTensorCores)
    {
        namespace wmma = nvcuda::wmma;
        const int warp = threadIdx.x / 32;
        const int warps = blockDim.x / 32;
        const int tilesN = Nc / 16;
        for (int tile = warp; tile < (M / 16) * tilesN; tile += warps)
        {
            const int i0 = tile / tilesN * 16;
            const int j0 = tile % tilesN * 16;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            if (accumulate)
            {
                wmma::load_matrix_sync(acc, C + i0 * ldc + j0, ldc, wmma::mem_row_major);
            }
            else
            {
                wmma::fill_fragment(acc, 0.0f);
            }
            (products.mmaTile(acc, i0, j0), ...);
            wmma::store_matrix_sync(C + i0 * ldc + j0, acc, ldc, wmma::mem_row_major);
        }
    }
    else
    {
        for (int e = threadIdx.x; e < M * Nc; e += blockDim.x)
        {
            const int i = e / Nc;
            const int j = e - i * Nc;
            float sum = accumulate ? C[i * ldc + j] : 0.0f;
            ((sum = products.dot(sum, i, j)), ...);
            C[i * ldc + j] = sum;
        }
    }
}

// Copies rows [t0, t0 + valid) of a [.., L, groups, width] tensor (the (b, group) slice starting at
// `first`, `rowStride` elements between steps) into a Q x width tile, zero rows past `valid`.
template <typename Op, typename T>
__device__ void stageRows(Op* tile, const T* src, int64_t first, int64_t rowStride, int valid, int Q, int width)
{
    for (int e = threadIdx.x; e < Q * width; e += blockDim.x)
    {
        const int i = e / width;
        const int k = e - i * width;
        if constexpr (std::is_same<Op, T>::value)
        {
            tile[e] = i < valid ? src[first + i * rowStride + k] : fromF<Op>(0.0f);
        }
        else
        {
            tile[e] = fromF<Op>(i < valid ? toF(src[first + i * rowStride + k]) : 0.0f);
        }
    }
}

// Block (bh, chunk) of a (B*H) x chunks grid flattened onto grid.x.
struct ChunkBlock
{
    int64_t b;
    int h;
    int g;
    int64_t bh;
    int64_t chunk;
    int64_t t0;
    int valid; // steps of this chunk inside [0, L)
};

template <typename T, typename Tdt>
__device__ ChunkBlock chunkBlock(const Args<T, Tdt>& a)
{
    ChunkBlock c;
    c.bh = blockIdx.x / a.numChunks;
    c.chunk = blockIdx.x - c.bh * a.numChunks;
    c.b = c.bh / a.H;
    c.h = static_cast<int>(c.bh - c.b * a.H);
    c.g = c.h / (a.H / a.G);
    c.t0 = c.chunk * a.Q;
    c.valid = static_cast<int>(min(static_cast<int64_t>(a.Q), a.L - c.t0));
    return c;
}

// Phase 1: the state chunk `chunk` adds in direction blockIdx.z, and its decay.
template <typename T, typename Tdt, bool kTensorCores>
__global__ void __launch_bounds__(kBlockThreads) chunkStateKernel(Args<T, Tdt> a, CudaChunkStateSmem smem)
{
    using Op = Operand<T, kTensorCores>;
    HM_DYNAMIC_SHARED(raw);
    Op* xw = reinterpret_cast<Op*>(raw + smem.x);
    Op* bS = reinterpret_cast<Op*>(raw + smem.b);
    float* stateS = reinterpret_cast<float*>(raw + smem.state);
    float* delta = reinterpret_cast<float*>(raw + smem.scan);
    float* pre = delta + a.Q;
    float* suf = pre + a.Q;
    float* weight = suf + a.Q;

    const ChunkBlock c = chunkBlock(a);
    const int dir = blockIdx.z;
    const int Q = a.Q;
    const Tdt* dt = dir == 0 ? a.dtF : a.dtB;
    const T* Bm = dir == 0 ? a.Bf : a.Bb;

    chunkScans(dt, (c.b * a.L + c.t0) * a.H + c.h, a.H, c.valid, Q, toF(a.A[c.h]), toF(a.dtBias[c.h]), delta, pre,
        suf);
    for (int j = threadIdx.x; j < Q; j += blockDim.x)
    {
        // decay from step j to the chunk's far end: the steps after j (forward) or before j (backward)
        const float toEnd = dir == 0 ? (j + 1 < Q ? suf[j + 1] : 0.0f) : (j > 0 ? pre[j - 1] : 0.0f);
        weight[j] = delta[j] * expf(toEnd);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < Q * a.P; e += blockDim.x)
    {
        const int j = e / a.P;
        const int p = e - j * a.P;
        const float xv = j < c.valid ? toF(a.x[((c.b * a.L + c.t0 + j) * a.H + c.h) * a.P + p]) : 0.0f;
        xw[e] = fromF<Op>(weight[j] * xv);
    }
    stageRows(bS, Bm, (c.b * a.L + c.t0) * a.G * a.N + c.g * a.N, static_cast<int64_t>(a.G) * a.N, c.valid, Q, a.N);
    __syncthreads();

    // S_loc[P x N] = (W X)^T · B: the staged x tile read column-major is X^T.
    blockGemm<Op, kTensorCores>(a.P, a.N, stateS, a.N, false, Product<Op, false, true>{xw, a.P, bS, a.N, Q});
    __syncthreads();

    const int64_t chunkSlot = static_cast<int64_t>(dir) * gridDim.x + blockIdx.x; // [dir, bh, chunk]
    float* dst = a.chunkStates + chunkSlot * a.P * a.N;
    for (int e = threadIdx.x; e < a.P * a.N; e += blockDim.x)
    {
        dst[e] = stateS[e];
    }
    if (threadIdx.x == 0)
    {
        a.chunkDecays[chunkSlot] = expf(pre[Q - 1]);
    }
}

// Phase 2: walk the chunks in scan order; each chunk's slot receives the state entering it.
// Batches of kPassAhead chunks are loaded before any is stored: the compiler cannot move a load
// above the previous chunk's store (it cannot tell they never alias), and one load in flight per
// thread would make the walk latency-bound.
constexpr int kPassAhead = 8;

__global__ void __launch_bounds__(kPassThreads) statePassingKernel(float* chunkStates, const float* chunkDecays,
    const float* stateF0, const float* stateB0, float* stateF, float* stateB, int64_t numChunks, int stateSize,
    int blocksPerHead)
{
    const int64_t bh = blockIdx.x / blocksPerHead;
    const int e = static_cast<int>(blockIdx.x - bh * blocksPerHead) * blockDim.x + threadIdx.x;
    if (e >= stateSize)
    {
        return;
    }
    const int dir = blockIdx.z;
    const int64_t heads = gridDim.x / blocksPerHead;
    const float* init = dir == 0 ? stateF0 : stateB0;
    float S = init != nullptr ? init[bh * stateSize + e] : 0.0f;
    const int64_t first = (dir * heads + bh) * numChunks; // chunk slot of chunk 0
    for (int64_t k0 = 0; k0 < numChunks; k0 += kPassAhead)
    {
        float local[kPassAhead];
        float decay[kPassAhead];
#pragma unroll
        for (int u = 0; u < kPassAhead; ++u)
        {
            const int64_t k = k0 + u;
            const int64_t chunk = dir == 0 ? k : numChunks - 1 - k;
            local[u] = k < numChunks ? chunkStates[(first + chunk) * stateSize + e] : 0.0f;
            decay[u] = k < numChunks ? chunkDecays[first + chunk] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kPassAhead; ++u)
        {
            const int64_t k = k0 + u;
            if (k < numChunks)
            {
                const int64_t chunk = dir == 0 ? k : numChunks - 1 - k;
                chunkStates[(first + chunk) * stateSize + e] = S;
                S = fmaf(decay[u], S, local[u]);
            }
        }
    }
    (dir == 0 ? stateF : stateB)[bh * stateSize + e] = S;
}

// Phase 3: y rows of one chunk, forward then backward contribution, written once.
template <typename T, typename Tdt, bool kTensorCores>
__global__ void __launch_bounds__(kBlockThreads) chunkOutputKernel(Args<T, Tdt> a, CudaChunkOutputSmem smem)
{
    using Op = Operand<T, kTensorCores>;
    HM_DYNAMIC_SHARED(raw);
    Op* xS = reinterpret_cast<Op*>(raw + smem.x);
    Op* cS = reinterpret_cast<Op*>(raw + smem.c);
    Op* bS = reinterpret_cast<Op*>(raw + smem.b);
    Op* stateS = reinterpret_cast<Op*>(raw + smem.state);
    float* gS = reinterpret_cast<float*>(raw + smem.g);
    Op* mS = reinterpret_cast<Op*>(raw + smem.m);
    float* yS = reinterpret_cast<float*>(raw + smem.y);
    float* delta = reinterpret_cast<float*>(raw + smem.scan);
    float* pre = delta + a.Q;
    float* suf = pre + a.Q;

    const ChunkBlock c = chunkBlock(a);
    const int Q = a.Q;
    const int P = a.P;
    const int N = a.N;
    const int64_t bcRowStride = static_cast<int64_t>(a.G) * N;
    const int64_t bcFirst = (c.b * a.L + c.t0) * bcRowStride + c.g * N; // B/C element (t0, n = 0)
    stageRows(xS, a.x, ((c.b * a.L + c.t0) * a.H + c.h) * P, static_cast<int64_t>(a.H) * P, c.valid, Q, P);

    for (int dir = 0; dir < 2; ++dir)
    {
        const Tdt* dt = dir == 0 ? a.dtF : a.dtB;
        const T* Bm = dir == 0 ? a.Bf : a.Bb;
        const T* Cm = dir == 0 ? a.Cf : a.Cb;
        chunkScans(dt, (c.b * a.L + c.t0) * a.H + c.h, a.H, c.valid, Q, toF(a.A[c.h]), toF(a.dtBias[c.h]), delta,
            pre, suf);

        // Query rows: C at t-1 (forward) or t+1 (backward); zero when that step is outside the video
        // or row i is past the chunk's valid steps.
        const int shift = dir == 0 ? -1 : 1;
        for (int e = threadIdx.x; e < Q * N; e += blockDim.x)
        {
            const int i = e / N;
            const int n = e - i * N;
            const int64_t t = c.t0 + i + shift;
            const bool inside = i < c.valid && t >= 0 && t < a.L;
            cS[e] = inside ? fromF<Op>(toF(Cm[bcFirst + (i + shift) * bcRowStride + n])) : fromF<Op>(0.0f);
        }
        stageRows(bS, Bm, bcFirst, bcRowStride, c.valid, Q, N);
        const float* entering = a.chunkStates + (static_cast<int64_t>(dir) * gridDim.x + blockIdx.x) * P * N;
        for (int e = threadIdx.x; e < P * N; e += blockDim.x)
        {
            stateS[e] = fromF<Op>(entering[e]);
        }
        __syncthreads();

        // G[i, j] = C_query_i · B_j
        blockGemm<Op, kTensorCores>(Q, Q, gS, Q, false, Product<Op, true, false>{cS, N, bS, N, N});
        __syncthreads();

        // M[i, j] = G[i, j] e^{decay from j to the query step} Δ_j on the strict lower (forward) or
        // upper (backward) triangle; query rows scaled by the decay from the chunk edge.
        for (int e = threadIdx.x; e < Q * Q; e += blockDim.x)
        {
            const int i = e / Q;
            const int j = e - i * Q;
            float v = 0.0f;
            if (dir == 0 && j < i)
            {
                v = gS[e] * expf(pre[i - 1] - pre[j]) * delta[j];
            }
            else if (dir == 1 && j > i)
            {
                v = gS[e] * expf(suf[i + 1] - suf[j]) * delta[j];
            }
            mS[e] = fromF<Op>(v);
        }
        for (int e = threadIdx.x; e < Q * N; e += blockDim.x)
        {
            const int i = e / N;
            const float edge = dir == 0 ? (i > 0 ? pre[i - 1] : 0.0f) : (i + 1 < Q ? suf[i + 1] : 0.0f);
            cS[e] = fromF<Op>(toF(cS[e]) * expf(edge));
        }
        __syncthreads();

        // y (+)= M · X + (scaled C) · S_in^T
        blockGemm<Op, kTensorCores>(Q, P, yS, P, dir == 1, Product<Op, true, true>{mS, Q, xS, P, Q},
            Product<Op, true, false>{cS, N, stateS, N, N});
        __syncthreads(); // the next direction restages cS, bS, stateS and the scans
    }

    T* yRow = a.y + ((c.b * a.L + c.t0) * a.H + c.h) * P;
    for (int e = threadIdx.x; e < c.valid * P; e += blockDim.x)
    {
        const int i = e / P;
        const int p = e - i * P;
        yRow[static_cast<int64_t>(i) * a.H * P + p] = fromF<T>(yS[e]);
    }
}

// Typed kernel arguments for a plan.
template <typename T, typename Tdt>
Args<T, Tdt> makeArgs(const HmScanShape& s, const CudaPlan& plan, const HmScanTensors& t, void* workspace)
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
    a.stateF = t.state_f;
    a.stateB = t.state_b;
    unsigned char* ws = static_cast<unsigned char*>(workspace);
    a.chunkStates = ws == nullptr ? nullptr : reinterpret_cast<float*>(ws + plan.chunkStatesOffset);
    a.chunkDecays = ws == nullptr ? nullptr : reinterpret_cast<float*>(ws + plan.chunkDecaysOffset);
    a.L = s.length;
    a.numChunks = plan.numChunks;
    a.H = static_cast<int>(s.heads);
    a.P = static_cast<int>(s.headdim);
    a.G = static_cast<int>(s.groups);
    a.N = static_cast<int>(s.dstate);
    a.Q = plan.chunk;
    return a;
}

} // namespace device
} // namespace hydra_scan
} // namespace hieramamba
