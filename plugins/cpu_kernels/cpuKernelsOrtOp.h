// The hieramamba::Bf16Conv, Bf16MatMul, Bf16FeedForward, ChannelNorm and DepthwiseConv nodes of `bfloat16`
// bundles on ONNX Runtime's CPU execution provider (registered with HydraScan by RegisterCustomOps,
// hydraScanOrtOp.cpp).
#pragma once

#include "../capi/hmOrtAbi.h"

namespace hieramamba::cpu_kernels
{

// Bf16Conv: x (B, Cin, T) float, w (Cout, Cin, K) bfloat16 (an initializer), bias (Cout) float
// -> (B, Cout, T) float. Bf16MatMul: x (..., M, K) float, w (K, N) bfloat16 (an initializer)
// -> (..., M, N) float. Both live for the whole process.
const OrtCustomOp* bf16ConvCustomOp();
const OrtCustomOp* bf16MatMulCustomOp();
// Bf16FeedForward: x (B, C, T) float, w1 (H, C, 1) bfloat16, bias1 (H) float, w2 (C', H, 1) bfloat16,
// bias2 (C') float -> (B, C', T) float: Bf16Conv(w2) of the exact GELU of Bf16Conv(w1), in one pass.
const OrtCustomOp* bf16FeedForwardCustomOp();
// ChannelNorm: x (B, C, T), eps (one float), weight and bias (C) or (C, 1), all float -> (B, C, T).
const OrtCustomOp* channelNormCustomOp();
// DepthwiseConv: x (B, C, T), w (C, 1, K odd), bias (C), all float -> (B, C, T) ("same" padding).
const OrtCustomOp* depthwiseConvCustomOp();

} // namespace hieramamba::cpu_kernels
