// The hieramamba::Bf16Conv, Bf16MatMul, ChannelNorm and DepthwiseConv nodes of `bfloat16`
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
// ChannelNorm: x (B, C, T), eps (one float), weight and bias (C) or (C, 1), all float -> (B, C, T).
const OrtCustomOp* channelNormCustomOp();
// DepthwiseConv: x (B, C, T), w (C, 1, K odd), bias (C), all float -> (B, C, T) ("same" padding).
const OrtCustomOp* depthwiseConvCustomOp();

} // namespace hieramamba::cpu_kernels
