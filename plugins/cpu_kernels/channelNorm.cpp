// See channelNorm.h. Time is the contiguous axis: each task takes a block of kBlock time steps and
// walks the channels three times (sum, centred sum of squares, output), vectorised over time.
#include "channelNorm.h"

#include "../common/hmCpuFeatures.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace hieramamba::cpu_kernels
{
namespace
{

constexpr int64_t kBlock = 256; // time steps per task: C x 256 floats stay in L2 between the passes

// The body, inlined into a baseline and an AVX-512 wrapper (GCC inlines a function into one whose
// instruction set is a superset, and then vectorises it for that set); chosen once per process.
__attribute__((always_inline)) inline void normBody(const float* x, const float* weight, const float* bias,
    float eps, float* y, int64_t channels, int64_t t, int64_t t0, int64_t t1)
{
    float mean[kBlock], rstd[kBlock];
    const int64_t n = t1 - t0;
    std::fill(mean, mean + n, 0.0f);
    std::fill(rstd, rstd + n, 0.0f);
    for (int64_t c = 0; c < channels; ++c)
    {
        const float* xc = x + c * t + t0;
        for (int64_t i = 0; i < n; ++i)
        {
            mean[i] += xc[i];
        }
    }
    const float inv = 1.0f / static_cast<float>(channels);
    for (int64_t i = 0; i < n; ++i)
    {
        mean[i] *= inv;
    }
    for (int64_t c = 0; c < channels; ++c)
    {
        const float* xc = x + c * t + t0;
        for (int64_t i = 0; i < n; ++i)
        {
            const float d = xc[i] - mean[i];
            rstd[i] += d * d;
        }
    }
    for (int64_t i = 0; i < n; ++i)
    {
        rstd[i] = 1.0f / std::sqrt(rstd[i] * inv + eps);
    }
    for (int64_t c = 0; c < channels; ++c)
    {
        const float* xc = x + c * t + t0;
        float* yc = y + c * t + t0;
        const float w = weight[c], b = bias[c];
        for (int64_t i = 0; i < n; ++i)
        {
            yc[i] = (xc[i] - mean[i]) * rstd[i] * w + b;
        }
    }
}

void normBlock(const float* x, const float* weight, const float* bias, float eps, float* y, int64_t channels,
    int64_t t, int64_t t0, int64_t t1)
{
    normBody(x, weight, bias, eps, y, channels, t, t0, t1);
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void normBlockAvx512(const float* x, const float* weight, const float* bias,
    float eps, float* y, int64_t channels, int64_t t, int64_t t0, int64_t t1)
{
    normBody(x, weight, bias, eps, y, channels, t, t0, t1);
}
#endif

} // namespace

void channelNorm(const float* x, const float* weight, const float* bias, float eps, float* y, int64_t batch,
    int64_t channels, int64_t t, const TaskRunner& runner)
{
#if defined(__x86_64__)
    static const bool avx512 = cpuHasAvx512();
#endif
    const int64_t blocks = (t + kBlock - 1) / kBlock;
    runner(batch * blocks, [&](int64_t task) {
        const int64_t b = task / blocks, t0 = (task % blocks) * kBlock, t1 = std::min(t, t0 + kBlock);
        const float* xb = x + b * channels * t;
        float* yb = y + b * channels * t;
#if defined(__x86_64__)
        if (avx512)
        {
            normBlockAvx512(xb, weight, bias, eps, yb, channels, t, t0, t1);
            return;
        }
#endif
        normBlock(xb, weight, bias, eps, yb, channels, t, t0, t1);
    });
}

} // namespace hieramamba::cpu_kernels
