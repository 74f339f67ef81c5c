// Matrix products with bfloat16 operands and float32 accumulation, for the `bfloat16` bundle dtype
// (docs/export.md): activations and outputs stay float32; only the operands of the product are
// rounded (round to nearest even), so each product is exact in float32 and a result differs from a
// float64 sum of the same rounded operands by float32 accumulation only.
//
// * Convolution over time (Bf16Conv): y[b, o, t] = bias[o] + sum_{c, j} w[o, c, j] * x[b, c, t + j - pad],
//   pad = (K - 1) / 2 ("same" padding, odd K), stride 1, dilation 1, one group.
// * MatMul with a constant right operand (Bf16MatMul): y[m, n] = sum_k x[m, k] * w[k, n].
//
// On CPUs with AVX512-BF16 the products run as VDPBF16PS (two per lane and instruction: twice the
// float32 FMA rate); elsewhere, or with HIERAMAMBA_BF16_GEMM=portable, a plain loop computes the same
// rounded products (slower).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hieramamba::cpu_kernels
{

// Runs body(i) for i in [0, count), possibly in parallel (the caller's thread pool).
using TaskRunner = std::function<void(int64_t count, const std::function<void(int64_t)>& body)>;

// Convolution weights repacked once per node (layout in bf16Gemm.cpp).
struct PackedConv
{
    int64_t cout = 0, cin = 0, k = 0;
    std::vector<uint32_t> pairs;
    std::vector<float> bias; // cout values (zeros when the node has none)
};

// `w` (cout, cin, k) bfloat16 bit patterns; `bias` cout floats or nullptr.
PackedConv packConv(const uint16_t* w, const float* bias, int64_t cout, int64_t cin, int64_t k);

// x (batch, cin, t) float -> y (batch, cout, t) float. Returns "" or an error message.
std::string runConv(const PackedConv& w, const float* x, float* y, int64_t batch, int64_t t, const TaskRunner& runner);

// The position-wise feed-forward block (Bf16FeedForward): y = fc2(GELU(fc1(x))), fc1 (H, Cin, 1)
// and fc2 (Cout, H, 1) packed as above, GELU exact (erf). The hidden activations never exist as a
// (batch, H, t) tensor: each time span goes through both products while its H x span block is in
// cache. Same roundings as Bf16Conv -> GELU -> Bf16Conv: the hidden values are rounded to bfloat16
// as the second product's operands (GELU itself within ~2.5e-7 |x| of exact on the AVX512-BF16 path).
std::string runFeedForward(const PackedConv& fc1, const PackedConv& fc2, const float* x, float* y, int64_t batch,
    int64_t t, const TaskRunner& runner);
// MatMul right operands repacked once per node (layout in bf16Gemm.cpp).
struct PackedMatrix
{
    int64_t k = 0, n = 0;
    std::vector<uint32_t> pairs;
};

// `w` (k, n) bfloat16 bit patterns.
PackedMatrix packMatrix(const uint16_t* w, int64_t k, int64_t n);

// x (m, k) float -> y (m, n) float.
std::string runMatMul(const PackedMatrix& w, const float* x, float* y, int64_t m, const TaskRunner& runner);

// Whether the AVX512-BF16 path is used on this CPU.
bool usesAvx512Bf16();

// Round-to-nearest-even float -> bfloat16 bits (NaN kept a quiet NaN).
uint16_t toBf16(float v);

} // namespace hieramamba::cpu_kernels
