// CPU HydraScan: the sequential recurrence of REFERENCE §7, one (batch, head) per task.
//
// This is the portable kernel behind the torch op's CPU path and the reference the CUDA kernel is
// checked against on a GPU. Both directions run over the same fp32 row buffer for y so the one-step
// shift needs no flips or rolls: the forward output of step t lands in row t+1, the backward output
// of step t in row t-1. Every row receives at most one term per direction added onto zero, so the
// result does not depend on the order of the two directions (the CUDA kernel relies on the same).
//
// Two code paths for one step of a head, with bitwise-equal results: the portable loop (one state
// row per p, its dot product as 4 explicit partial sums by n % 4, the rest of N on the first, then
// (((0 + s0) + s1) + s2) + s3), and on CPUs with AVX-512 a loop over 16 p at a time on a transposed
// state that performs the same roundings in the same order (separate multiplies and adds: the
// scan core is built without FP contraction). HIERAMAMBA_SCAN_CPU=portable forces the portable
// loop; hm_version() names the path in use; tests/test_native_scan.py checks the two bit for bit.
#include "hydraScanKernel.h"

#include "../common/hmCpuFeatures.h"
#include "../common/hmFloat16.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define HM_SCAN_X86 1
#endif

namespace hieramamba
{
namespace hydra_scan
{
namespace
{

// softplus with mamba's threshold: identity above 20, where log1p(exp(v)) == v in fp32 anyway.
inline float softplus(float v)
{
    return v > 20.0f ? v : std::log1p(std::exp(v));
}

// Partial sums of the step's dot product (both code paths; see the top of the file).
constexpr int64_t kLanes = 4;

} // namespace

bool cpuUsesAvx512()
{
#ifdef HM_SCAN_X86
    static const bool use = hieramamba::cpuHasAvx512()
        && !(std::getenv("HIERAMAMBA_SCAN_CPU") != nullptr && std::strcmp(std::getenv("HIERAMAMBA_SCAN_CPU"), "portable") == 0);
    return use;
#else
    return false;
#endif
}

namespace
{

#ifdef HM_SCAN_X86
constexpr int64_t kBlocks = 4; // 16-lane blocks of p per pass: 64 p, each b[n], c[n] broadcast once

// State column n of one pass for partial-sum lane `lane`: v = u*b[n] + s[n]*decay stored back,
// acc[k][lane] += v*c[n], for the kBlocks blocks of 16 p (Full: all 64 p present, plain loads and
// stores, which are much cheaper than masked ones on some CPUs; else masked at the end of P).
template <bool Full>
__attribute__((target("avx512f"), always_inline)) inline void stepColumn(float* row, const __mmask16* m,
    const __m512* vu, __m512 vDecay, float bn, float cn, __m512 (*acc)[kLanes], int lane)
{
    const __m512 vb = _mm512_set1_ps(bn), vc = _mm512_set1_ps(cn);
#pragma GCC unroll 4
    for (int64_t k = 0; k < kBlocks; ++k)
    {
        const __m512 s = Full ? _mm512_loadu_ps(row + 16 * k) : _mm512_maskz_loadu_ps(m[k], row + 16 * k);
        const __m512 v = _mm512_add_ps(_mm512_mul_ps(vu[k], vb), _mm512_mul_ps(s, vDecay));
        if (Full)
        {
            _mm512_storeu_ps(row + 16 * k, v);
        }
        else
        {
            _mm512_mask_storeu_ps(row + 16 * k, m[k], v);
        }
        acc[k][lane] = _mm512_add_ps(acc[k][lane], _mm512_mul_ps(v, vc));
    }
}

template <bool Full>
__attribute__((target("avx512f"))) void stepColumns(float* col, const __mmask16* m, const __m512* vu,
    __m512 vDecay, const float* b, const float* c, __m512 (*acc)[kLanes], int64_t P, int64_t N)
{
    const int64_t nVec = N - N % kLanes;
    int64_t n = 0;
    for (; n < nVec; n += kLanes)
    {
        stepColumn<Full>(col + n * P, m, vu, vDecay, b[n], c[n], acc, 0);
        stepColumn<Full>(col + (n + 1) * P, m, vu, vDecay, b[n + 1], c[n + 1], acc, 1);
        stepColumn<Full>(col + (n + 2) * P, m, vu, vDecay, b[n + 2], c[n + 2], acc, 2);
        stepColumn<Full>(col + (n + 3) * P, m, vu, vDecay, b[n + 3], c[n + 3], acc, 3);
    }
    for (; n < N; ++n)
    {
        stepColumn<Full>(col + n * P, m, vu, vDecay, b[n], c[n], acc, 0);
    }
}

// One step of one head on the transposed state sT (N rows of P), one p per lane: the portable
// loop's operations in its order (4 partial sums by n % 4 over the first N - N % 4 columns, the
// rest on the first, yOut += (((0 + s0) + s1) + s2) + s3; -ffp-contract=off keeps each multiply
// and add a separate rounding).
__attribute__((target("avx512f"))) void stepAvx512(float* sT, const float* u, const float* b, const float* c,
    float decay, float* yOut, int64_t P, int64_t N)
{
    const __m512 vDecay = _mm512_set1_ps(decay);
    for (int64_t p0 = 0; p0 < P; p0 += 16 * kBlocks)
    {
        __mmask16 m[kBlocks];
        __m512 vu[kBlocks];
        __m512 acc[kBlocks][kLanes];
#pragma GCC unroll 4
        for (int64_t k = 0; k < kBlocks; ++k)
        {
            const int64_t width = std::max<int64_t>(0, std::min<int64_t>(16, P - p0 - 16 * k));
            m[k] = static_cast<__mmask16>((1u << width) - 1u);
            vu[k] = _mm512_maskz_loadu_ps(m[k], u + p0 + 16 * k);
#pragma GCC unroll 4
            for (int64_t j = 0; j < kLanes; ++j)
            {
                acc[k][j] = _mm512_setzero_ps();
            }
        }
        if (P - p0 >= 16 * kBlocks)
        {
            stepColumns<true>(sT + p0, m, vu, vDecay, b, c, acc, P, N);
        }
        else
        {
            stepColumns<false>(sT + p0, m, vu, vDecay, b, c, acc, P, N);
        }
        if (yOut == nullptr)
        {
            continue;
        }
#pragma GCC unroll 4
        for (int64_t k = 0; k < kBlocks; ++k)
        {
            __m512 sum = _mm512_add_ps(_mm512_setzero_ps(), acc[k][0]);
            for (int64_t j = 1; j < kLanes; ++j)
            {
                sum = _mm512_add_ps(sum, acc[k][j]);
            }
            float* out = yOut + p0 + 16 * k;
            _mm512_mask_storeu_ps(out, m[k], _mm512_add_ps(sum, _mm512_maskz_loadu_ps(m[k], out)));
        }
    }
}
#endif

struct Scratch
{
    std::vector<float> state; // P*N, fp32 carry (N*P, transposed, on the AVX-512 path)
    std::vector<float> yAcc;  // L*P, fp32 sum of both shifted directions
    std::vector<float> row;   // P, x_t of this head
    std::vector<float> bRow;  // N
    std::vector<float> cRow;  // N
};

template <typename T, typename Tdt>
class HeadScanner
{
public:
    HeadScanner(const HmScanShape& s, const HmScanTensors& t)
        : s_(s)
        , t_(t)
    {
    }

    void operator()(int64_t b, int64_t h, Scratch& w) const
    {
        const int64_t L = s_.length;
        const int64_t P = s_.headdim;
        const int64_t N = s_.dstate;
        w.state.resize(static_cast<size_t>(P * N));
        w.yAcc.assign(static_cast<size_t>(L * P), 0.0f);
        w.row.resize(static_cast<size_t>(P));
        w.bRow.resize(static_cast<size_t>(N));
        w.cRow.resize(static_cast<size_t>(N));

        scanDirection(b, h, /*forward=*/true, w);
        scanDirection(b, h, /*forward=*/false, w);

        T* y = static_cast<T*>(t_.y);
        for (int64_t t = 0; t < L; ++t)
        {
            T* yRow = y + ((b * L + t) * s_.heads + h) * P;
            const float* acc = w.yAcc.data() + t * P;
            for (int64_t p = 0; p < P; ++p)
            {
                yRow[p] = fromFloat<T>(acc[p]);
            }
        }
    }

private:
    void scanDirection(int64_t b, int64_t h, bool forward, Scratch& w) const
    {
        const int64_t L = s_.length;
        const int64_t H = s_.heads;
        const int64_t P = s_.headdim;
        const int64_t G = s_.groups;
        const int64_t N = s_.dstate;
        const int64_t g = h / (H / G);

        const T* x = static_cast<const T*>(t_.x);
        const Tdt* dt = static_cast<const Tdt*>(forward ? t_.dt_f : t_.dt_b);
        const T* Bm = static_cast<const T*>(forward ? t_.B_f : t_.B_b);
        const T* Cm = static_cast<const T*>(forward ? t_.C_f : t_.C_b);
        const float* init = forward ? t_.state_f0 : t_.state_b0;
        float* finalState = forward ? t_.state_f : t_.state_b;
        const float A = toFloat(static_cast<const Tdt*>(t_.A)[h]);
        const float bias = toFloat(static_cast<const Tdt*>(t_.dt_bias)[h]);

        float* S = w.state.data();
        const int64_t stateOffset = (b * H + h) * P * N;
        const bool simd = cpuUsesAvx512();
        if (init == nullptr)
        {
            std::fill(S, S + P * N, 0.0f);
        }
        else if (simd)
        {
            transpose(init + stateOffset, S, P, N);
        }
        else
        {
            std::copy(init + stateOffset, init + stateOffset + P * N, S);
        }

        float* xr = w.row.data();
        float* br = w.bRow.data();
        float* cr = w.cRow.data();
        for (int64_t step = 0; step < L; ++step)
        {
            const int64_t t = forward ? step : L - 1 - step;
            // Shifted output row: the quasiseparable matrix is strictly lower (forward) / strictly
            // upper (backward) triangular, so step t feeds y[t+1] / y[t-1] and the ends get nothing.
            const int64_t tOut = forward ? t + 1 : t - 1;

            const float delta = softplus(toFloat(dt[(b * L + t) * H + h]) + bias);
            const float decay = std::exp(delta * A);
            const T* xt = x + ((b * L + t) * H + h) * P;
            const int64_t bcOffset = ((b * L + t) * G + g) * N;
            for (int64_t p = 0; p < P; ++p)
            {
                xr[p] = delta * toFloat(xt[p]);
            }
            for (int64_t n = 0; n < N; ++n)
            {
                br[n] = toFloat(Bm[bcOffset + n]);
                cr[n] = toFloat(Cm[bcOffset + n]);
            }

            const bool emit = tOut >= 0 && tOut < L;
            float* yOut = emit ? w.yAcc.data() + tOut * P : nullptr;
#ifdef HM_SCAN_X86
            if (simd)
            {
                stepAvx512(S, xr, br, cr, decay, yOut, P, N);
                continue;
            }
#endif
            const int64_t nVec = N - N % kLanes;
            for (int64_t p = 0; p < P; ++p)
            {
                float* Sp = S + p * N;
                const float u = xr[p];
                // The dot product as kLanes partial sums (lane n % kLanes, the rest of N on the
                // first), written out so that the order is the source's, whatever the compiler
                // vectorises; the AVX-512 step does the same operations in the same order.
                float acc[kLanes] = {};
                int64_t n = 0;
                for (; n < nVec; n += kLanes)
                {
                    for (int64_t j = 0; j < kLanes; ++j)
                    {
                        const float v = decay * Sp[n + j] + u * br[n + j];
                        Sp[n + j] = v;
                        acc[j] += v * cr[n + j];
                    }
                }
                for (; n < N; ++n)
                {
                    const float v = decay * Sp[n] + u * br[n];
                    Sp[n] = v;
                    acc[0] += v * cr[n];
                }
                if (emit)
                {
                    float sum = 0.0f + acc[0];
                    for (int64_t j = 1; j < kLanes; ++j)
                    {
                        sum += acc[j];
                    }
                    yOut[p] += sum;
                }
            }
        }
        if (simd)
        {
            transpose(S, finalState + stateOffset, N, P);
        }
        else
        {
            std::copy(S, S + P * N, finalState + stateOffset);
        }
    }

    // dst (cols, rows) = src (rows, cols) transposed.
    static void transpose(const float* src, float* dst, int64_t rows, int64_t cols)
    {
        for (int64_t r = 0; r < rows; ++r)
        {
            for (int64_t c = 0; c < cols; ++c)
            {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }

    HmScanShape s_;
    HmScanTensors t_;
};

template <typename T, typename Tdt>
void runTyped(const HmScanShape& s, const HmScanTensors& t, int numThreads, const HmTaskRunner* runner)
{
    const HeadScanner<T, Tdt> scanner(s, t);
    const int64_t tasks = s.batch * s.heads;
    if (tasks == 0)
    {
        return;
    }
    std::exception_ptr failure;
    std::atomic<bool> failed{false};
    // One (batch, head) per task, with scratch of its own: a few L*P floats, small next to the
    // task's L*P*N work, and nothing stays allocated in a host's pool threads afterwards.
    const std::function<void(int64_t)> task = [&](int64_t i) {
        if (failed)
        {
            return;
        }
        try
        {
            Scratch scratch;
            scanner(i / s.heads, i % s.heads, scratch);
        }
        catch (...)
        {
            if (!failed.exchange(true))
            {
                failure = std::current_exception();
            }
        }
    };
    if (runner != nullptr)
    {
        (*runner)(tasks, task);
    }
    else
    {
        int threads = numThreads > 0 ? numThreads : static_cast<int>(std::thread::hardware_concurrency());
        threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
        // Dynamic task counter: heads finish at the same pace, but a counter costs nothing and keeps
        // the split fair when the caller asks for more threads than there are cores.
        std::atomic<int64_t> next{0};
        auto worker = [&]() {
            for (int64_t i = next++; i < tasks; i = next++)
            {
                task(i);
            }
        };
        std::vector<std::thread> pool;
        pool.reserve(static_cast<size_t>(threads - 1));
        for (int i = 0; i < threads - 1; ++i)
        {
            pool.emplace_back(worker);
        }
        worker();
        for (auto& th : pool)
        {
            th.join();
        }
    }
    if (failure)
    {
        std::rethrow_exception(failure);
    }
}

template <typename T>
void dispatchDt(const HmScanShape& s, HmDType dt, const HmScanTensors& t, int numThreads, const HmTaskRunner* runner)
{
    if (dt == HM_FLOAT32)
    {
        runTyped<T, float>(s, t, numThreads, runner);
    }
    else
    {
        runTyped<T, T>(s, t, numThreads, runner); // validateDtypes: dt is fp32 or the activation type
    }
}

} // namespace

std::string runCpu(const HmScanShape& s, HmDType act, HmDType dt, const HmScanTensors& t, int numThreads,
    const HmTaskRunner* runner)
{
    std::string err = validateShape(s);
    if (err.empty())
    {
        err = validateDtypes(act, dt);
    }
    if (err.empty())
    {
        err = validatePointers(s, t);
    }
    if (!err.empty())
    {
        return err;
    }
    try
    {
        switch (act)
        {
        case HM_FLOAT32: dispatchDt<float>(s, dt, t, numThreads, runner); break;
        case HM_FLOAT16: dispatchDt<Half>(s, dt, t, numThreads, runner); break;
        case HM_BFLOAT16: dispatchDt<BFloat16>(s, dt, t, numThreads, runner); break;
        }
    }
    catch (const std::exception& e)
    {
        return std::string("HydraScan CPU kernel failed: ") + e.what();
    }
    catch (...)
    {
        return "HydraScan CPU kernel failed with an unknown exception";
    }
    return {};
}

} // namespace hydra_scan
} // namespace hieramamba
