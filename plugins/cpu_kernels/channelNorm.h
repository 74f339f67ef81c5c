// LayerNorm over the channel axis of (B, C, T) float32, the model's ChannelLayerNorm, in one kernel:
// y[b, c, t] = (x[b, c, t] - mean) / sqrt(var + eps) * weight[c] + bias[c], mean and (biased) var
// over c. The exported graph computes it in nine element-wise ops and two MatMuls (seven passes
// over the tensor); this reads each block of time steps from cache three times and memory once.
// Used by `bfloat16` bundles (hieramamba::ChannelNorm, export/bf16.py); float32 math throughout.
#pragma once

#include "bf16Gemm.h" // TaskRunner

#include <cstdint>

namespace hieramamba::cpu_kernels
{

void channelNorm(const float* x, const float* weight, const float* bias, float eps, float* y, int64_t batch,
    int64_t channels, int64_t t, const TaskRunner& runner);

} // namespace hieramamba::cpu_kernels
