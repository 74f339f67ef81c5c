// Depthwise convolution over time, float32, "same" padding: y[b, c, t] = bias[c] +
// sum_j w[c, j] * x[b, c, t + j - (K - 1) / 2] (zeros outside), K odd, stride 1, dilation 1, one
// group per channel. ONNX Runtime's grouped Conv runs these at ~12 GFLOP/s on this project's shapes
// (Hydra's 7-tap conv over 1024 channels, the 3-tap q/k/v convs); here each channel row stays in
// L1 and the taps are vectorised over time. Used by `bfloat16` bundles (hieramamba::DepthwiseConv,
// export/bf16.py).
#pragma once

#include "bf16Gemm.h" // TaskRunner

#include <cstdint>

namespace hieramamba::cpu_kernels
{

// x (batch, channels, t), w (channels, k), bias (channels), y (batch, channels, t).
void depthwiseConv(const float* x, const float* w, const float* bias, float* y, int64_t batch, int64_t channels,
    int64_t t, int64_t k, const TaskRunner& runner);

} // namespace hieramamba::cpu_kernels
