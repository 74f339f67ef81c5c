// See depthwiseConv.h.
#include "depthwiseConv.h"

#include "../common/hmCpuFeatures.h"

#include <algorithm>

namespace hieramamba::cpu_kernels
{
namespace
{

constexpr int64_t kRowsPerTask = 16;

// One channel row: y = bias, then one pass per tap over the range where the tap's input exists
// (the loops are contiguous, so the compiler vectorises them). Inlined into a baseline and an
// AVX-512 wrapper, chosen once per process (as channelNorm.cpp).
__attribute__((always_inline)) inline void rowBody(const float* x, const float* w, float bias, float* y, int64_t t,
    int64_t k)
{
    const int64_t pad = (k - 1) / 2;
    std::fill(y, y + t, bias);
    for (int64_t j = 0; j < k; ++j)
    {
        const float wj = w[j];
        const int64_t shift = j - pad;
        const int64_t i0 = std::max<int64_t>(0, -shift), i1 = std::min<int64_t>(t, t - shift);
        for (int64_t i = i0; i < i1; ++i)
        {
            y[i] += wj * x[i + shift];
        }
    }
}

void rows(const float* x, const float* w, const float* bias, float* y, int64_t c0, int64_t c1, int64_t channels,
    int64_t t, int64_t k)
{
    for (int64_t r = c0; r < c1; ++r)
    {
        const int64_t c = r % channels;
        rowBody(x + r * t, w + c * k, bias[c], y + r * t, t, k);
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void rowsAvx512(const float* x, const float* w, const float* bias, float* y,
    int64_t c0, int64_t c1, int64_t channels, int64_t t, int64_t k)
{
    for (int64_t r = c0; r < c1; ++r)
    {
        const int64_t c = r % channels;
        rowBody(x + r * t, w + c * k, bias[c], y + r * t, t, k);
    }
}
#endif

} // namespace

void depthwiseConv(const float* x, const float* w, const float* bias, float* y, int64_t batch, int64_t channels,
    int64_t t, int64_t k, const TaskRunner& runner)
{
#if defined(__x86_64__)
    static const bool avx512 = cpuHasAvx512();
#endif
    const int64_t total = batch * channels; // rows of (batch, channel)
    runner((total + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
        const int64_t r0 = task * kRowsPerTask, r1 = std::min(total, r0 + kRowsPerTask);
#if defined(__x86_64__)
        if (avx512)
        {
            rowsAvx512(x, w, bias, y, r0, r1, channels, t, k);
            return;
        }
#endif
        rows(x, w, bias, y, r0, r1, channels, t, k);
    });
}

} // namespace hieramamba::cpu_kernels
