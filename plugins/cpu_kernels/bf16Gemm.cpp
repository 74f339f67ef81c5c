// See bf16Gemm.h. Convolution layouts (R = kRows output rows per block, Kp = ceil(cin / 2) channel pairs):
//   weights  pairs[ob][j][cp][r]  = bf16(w[ob*R + r, 2cp, j]) | bf16(w[ob*R + r, 2cp + 1, j]) << 16
//   input    xp[cp][pad + t]      = bf16(x[2cp, t]) | bf16(x[2cp + 1, t]) << 16, zero outside [0, t)
// so that one VDPBF16PS multiplies 16 time steps of a channel pair by one broadcast weight pair.
#include "bf16Gemm.h"

#include "../common/hmCpuFeatures.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HM_BF16_X86 1
#endif

namespace hieramamba::cpu_kernels
{
namespace
{

constexpr int64_t kRows = 8;       // output rows per block (broadcasts per step)
constexpr int64_t kTile = 48;      // time steps per tile (three 16-lane accumulators per row)
constexpr int64_t kTilesPerTask = 4;
constexpr int64_t kBlocksPerTask = 8;
constexpr int64_t kPairsPerBlock = 128; // x 3 taps at most: a tile's input block stays in L1
constexpr int64_t kFeedForwardSteps = kTile; // time steps per feed-forward task (its hidden block stays in L2)
constexpr int64_t kFeedForwardMinTasks = 4;    // fewer spans than this: two whole products instead (all threads busy)

int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

float fromBf16(uint16_t v)
{
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Input pairs of one batch row: xp has kp rows of `stride` pairs (stride = tiles * kTile + 2 pad).
void packInputPortable(const float* x, uint32_t* xp, int64_t cin, int64_t t, int64_t pad, int64_t stride, int64_t cp)
{
    uint32_t* row = xp + cp * stride;
    std::fill(row, row + stride, 0u);
    const float* a = x + (2 * cp) * t;
    const float* b = 2 * cp + 1 < cin ? x + (2 * cp + 1) * t : nullptr;
    for (int64_t i = 0; i < t; ++i)
    {
        const uint32_t hi = b != nullptr ? toBf16(b[i]) : 0u;
        row[pad + i] = toBf16(a[i]) | (hi << 16);
    }
}

void convPortable(const PackedConv& w, const uint32_t* xp, float* y, int64_t t, int64_t stride, int64_t ob,
    int64_t t0, int64_t t1)
{
    const int64_t kp = ceilDiv(w.cin, 2);
    for (int64_t r = 0; r < kRows; ++r)
    {
        const int64_t o = ob * kRows + r;
        if (o >= w.cout)
        {
            break;
        }
        for (int64_t i = t0; i < std::min(t1, t); ++i)
        {
            float acc = 0.0f;
            for (int64_t j = 0; j < w.k; ++j)
            {
                const uint32_t* wp = w.pairs.data() + ((ob * w.k + j) * kp) * kRows + r;
                for (int64_t cp = 0; cp < kp; ++cp)
                {
                    const uint32_t wv = wp[cp * kRows];
                    const uint32_t xv = xp[cp * stride + i + j];
                    acc += fromBf16(static_cast<uint16_t>(wv)) * fromBf16(static_cast<uint16_t>(xv));
                    acc += fromBf16(static_cast<uint16_t>(wv >> 16)) * fromBf16(static_cast<uint16_t>(xv >> 16));
                }
            }
            y[o * t + i] = acc + w.bias[o];
        }
    }
}


// MatMul layouts (kp = ceil(k / 2)):
//   right operand  pairs[nt][cp][i] = bf16(w[2cp, nt*kTile + i]) | bf16(w[2cp + 1, nt*kTile + i]) << 16
//   left operand   xb[m][cp]        = bf16(x[m, 2cp]) | bf16(x[m, 2cp + 1]) << 16 (pairs are adjacent in x)
// one VDPBF16PS multiplies a broadcast pair of x by 16 columns of w.
void packRowsPortable(const float* x, uint32_t* xb, int64_t k, int64_t row)
{
    const int64_t kp = ceilDiv(k, 2);
    for (int64_t cp = 0; cp < kp; ++cp)
    {
        const uint32_t hi = 2 * cp + 1 < k ? toBf16(x[row * k + 2 * cp + 1]) : 0u;
        xb[row * kp + cp] = toBf16(x[row * k + 2 * cp]) | (hi << 16);
    }
}

void matmulPortable(const PackedMatrix& w, const uint32_t* xb, float* y, int64_t m, int64_t mb, int64_t nt)
{
    const int64_t kp = ceilDiv(w.k, 2);
    const uint32_t* wt = w.pairs.data() + nt * kp * kTile;
    for (int64_t r = 0; r < kRows && mb * kRows + r < m; ++r)
    {
        const int64_t row = mb * kRows + r;
        for (int64_t i = 0; i < kTile && nt * kTile + i < w.n; ++i)
        {
            float acc = 0.0f;
            for (int64_t cp = 0; cp < kp; ++cp)
            {
                const uint32_t xv = xb[row * kp + cp], wv = wt[cp * kTile + i];
                acc += fromBf16(static_cast<uint16_t>(xv)) * fromBf16(static_cast<uint16_t>(wv));
                acc += fromBf16(static_cast<uint16_t>(xv >> 16)) * fromBf16(static_cast<uint16_t>(wv >> 16));
            }
            y[row * w.n + nt * kTile + i] = acc;
        }
    }
}

#ifdef HM_BF16_X86
#define HM_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// Masked loads and stores only for partial vectors: on some CPUs (AMD Zen 4) a masked store costs
// several times a plain one, and they sat in the inner loops of packing and of every output tile.
HM_AVX512_BF16 inline __m512 loadFloats(const float* p, int64_t n)
{
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
}

HM_AVX512_BF16 inline void storeFloats(float* p, __m512 v, int64_t n)
{
    if (n >= 16)
    {
        _mm512_storeu_ps(p, v);
    }
    else
    {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
    }
}

HM_AVX512_BF16 void packInputAvx512(
    const float* x, uint32_t* xp, int64_t cin, int64_t t, int64_t pad, int64_t stride, int64_t cp)
{
    uint32_t* row = xp + cp * stride;
    std::fill(row, row + pad, 0u);
    std::fill(row + pad + t, row + stride, 0u);
    const float* a = x + (2 * cp) * t;
    const float* b = 2 * cp + 1 < cin ? x + (2 * cp + 1) * t : nullptr;
    // cvtne2ps_pbh(b, a) puts a's 16 values in the low half and b's in the high half; this index
    // interleaves them into (a0, b0, a1, b1, ...).
    alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8,
        24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i idx = _mm512_load_si512(kInterleave);
    for (int64_t i = 0; i < t; i += 16)
    {
        const int64_t n = std::min<int64_t>(16, t - i);
        const __m512 va = loadFloats(a + i, n);
        const __m512 vb = b != nullptr ? loadFloats(b + i, n) : _mm512_setzero_ps();
        const __m512i packed = _mm512_permutexvar_epi16(idx, (__m512i) _mm512_cvtne2ps_pbh(vb, va));
        if (n == 16)
        {
            _mm512_storeu_si512(row + pad + i, packed);
        }
        else
        {
            _mm512_mask_storeu_epi32(row + pad + i, static_cast<__mmask16>((1u << n) - 1u), packed);
        }
    }
}

// Output rows ob*R ... ob*R+R-1 (rows of y `ldy` floats apart), time steps [t0, t0 + kTile)
// (clipped at t), channel pairs [cp0, cp1): the first block of pairs starts from zero, later ones
// add to what y holds, the last adds the bias (blocks of pairs keep a tile's input in L1 across the
// row blocks).
HM_AVX512_BF16 void convTileAvx512(const PackedConv& w, const uint32_t* xp, float* y, int64_t t, int64_t stride,
    int64_t ob, int64_t t0, int64_t cp0, int64_t cp1, int64_t ldy)
{
    const int64_t kp = ceilDiv(w.cin, 2);
    const bool first = cp0 == 0, last = cp1 == kp;
    __m512 acc[kRows][3];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r)
    {
        acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
    }
    for (int64_t j = 0; j < w.k; ++j)
    {
        const uint32_t* xcol = xp + t0 + j;
        const uint32_t* wp = w.pairs.data() + ((ob * w.k + j) * kp + cp0) * kRows;
        for (int64_t cp = cp0; cp < cp1; ++cp, wp += kRows)
        {
            const uint32_t* xr = xcol + cp * stride;
            const __m512bh b0 = (__m512bh) _mm512_loadu_si512(xr);
            const __m512bh b1 = (__m512bh) _mm512_loadu_si512(xr + 16);
            const __m512bh b2 = (__m512bh) _mm512_loadu_si512(xr + 32);
#pragma GCC unroll 8
            for (int64_t r = 0; r < kRows; ++r)
            {
                const __m512bh a = (__m512bh) _mm512_set1_epi32(static_cast<int>(wp[r]));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
                acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, b2);
            }
        }
    }
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r)
    {
        const int64_t o = ob * kRows + r;
        if (o >= w.cout)
        {
            break;
        }
        const __m512 bias = _mm512_set1_ps(last ? w.bias[o] : 0.0f);
        float* out = y + o * ldy + t0;
#pragma GCC unroll 3
        for (int64_t s = 0; s < 3; ++s)
        {
            const int64_t n = std::min<int64_t>(16, t - t0 - 16 * s);
            if (n <= 0)
            {
                break;
            }
            __m512 v = _mm512_add_ps(acc[r][s], bias);
            if (!first)
            {
                v = _mm512_add_ps(v, loadFloats(out + 16 * s, n));
            }
            storeFloats(out + 16 * s, v, n);
        }
    }
}

HM_AVX512_BF16 void packRowsAvx512(const float* x, uint32_t* xb, int64_t k, int64_t row)
{
    const int64_t kp = ceilDiv(k, 2);
    const float* src = x + row * k;
    uint16_t* dst = reinterpret_cast<uint16_t*>(xb + row * kp);
    for (int64_t i = 0; i < 2 * kp; i += 32)
    {
        const int64_t nLo = std::max<int64_t>(0, std::min<int64_t>(16, k - i));
        const int64_t nHi = std::max<int64_t>(0, std::min<int64_t>(16, k - i - 16));
        const __m512 lo = nLo > 0 ? loadFloats(src + i, nLo) : _mm512_setzero_ps();
        const __m512 hi = nHi > 0 ? loadFloats(src + i + 16, nHi) : _mm512_setzero_ps();
        const int64_t n = std::min<int64_t>(32, 2 * kp - i);
        const __m512i packed = (__m512i) _mm512_cvtne2ps_pbh(hi, lo);
        if (n == 32)
        {
            _mm512_storeu_si512(dst + i, packed);
        }
        else
        {
            _mm512_mask_storeu_epi16(dst + i, static_cast<__mmask32>((1u << n) - 1u), packed);
        }
    }
}

// Rows mb*R ... mb*R+R-1 (clipped at m), columns of tile nt, pairs [cp0, cp1) (first block from
// zero, later blocks added to y).
HM_AVX512_BF16 void matmulTileAvx512(const PackedMatrix& w, const uint32_t* xb, float* y, int64_t m, int64_t mb,
    int64_t nt, int64_t cp0, int64_t cp1)
{
    const int64_t kp = ceilDiv(w.k, 2);
    const int64_t rows = std::min<int64_t>(kRows, m - mb * kRows);
    __m512 acc[kRows][3];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r)
    {
        acc[r][0] = acc[r][1] = acc[r][2] = _mm512_setzero_ps();
    }
    const uint32_t* wp = w.pairs.data() + (nt * kp + cp0) * kTile;
    const uint32_t* xr = xb + mb * kRows * kp;
    for (int64_t cp = cp0; cp < cp1; ++cp, wp += kTile)
    {
        const __m512bh b0 = (__m512bh) _mm512_loadu_si512(wp);
        const __m512bh b1 = (__m512bh) _mm512_loadu_si512(wp + 16);
        const __m512bh b2 = (__m512bh) _mm512_loadu_si512(wp + 32);
#pragma GCC unroll 8
        for (int64_t r = 0; r < kRows; ++r)
        {
            const __m512bh a = (__m512bh) _mm512_set1_epi32(static_cast<int>(xr[r * kp + cp]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, b2);
        }
    }
    for (int64_t r = 0; r < rows; ++r)
    {
        float* out = y + (mb * kRows + r) * w.n + nt * kTile;
        for (int64_t s = 0; s < 3; ++s)
        {
            const int64_t n = std::min<int64_t>(16, w.n - nt * kTile - 16 * s);
            if (n <= 0)
            {
                break;
            }
            __m512 v = acc[r][s];
            if (cp0 != 0)
            {
                v = _mm512_add_ps(v, loadFloats(out + 16 * s, n));
            }
            storeFloats(out + 16 * s, v, n);
        }
    }
}

// GELU, x Φ(x) = x/2 · erfc(-x/√2). erfc(z) for z ≥ 0 as t(a1 + t(a2 + … + t a5)) e^{-z²},
// t = 1 / (1 + p z) (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7); for x < 0 that is 2Φ(x) itself,
// for x ≥ 0, 2Φ(x) = 2 - erfc(x/√2). With float32 arithmetic and the exp polynomial the result is
// within about 2.5e-7 · |x| of the exact GELU: below half a bfloat16 step of it for x > -4; below
// that, GELU(x) is under 2.5e-4 in magnitude and so is the difference.
HM_AVX512_BF16 inline __m512 expNonPositive(__m512 v)
{
    const __m512 lowest = _mm512_set1_ps(-104.0f); // e^-104 is below the smallest float
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, lowest, _CMP_LT_OQ), lowest);
    // The masked forms with every lane set: the plain ones start from an undefined vector, which
    // GCC 12 reports as maybe-uninitialized.
    const __m512 scaled = _mm512_mul_ps(v, _mm512_set1_ps(1.44269504f));
    const __m512 k = _mm512_mask_roundscale_ps(scaled, 0xffff, scaled, _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145752f), v);   // v - k ln2, in two parts
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 e = _mm512_set1_ps(1.0f / 720.0f);                             // Taylor, |r| ≤ ln2 / 2
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 120.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 24.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 6.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    return _mm512_mask_scalef_ps(e, 0xffff, e, k);
}

HM_AVX512_BF16 inline __m512 geluAvx512(__m512 x)
{
    const __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.707106781f));
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
    __m512 q = _mm512_set1_ps(1.061405429f);
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-1.453152027f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.421413741f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-0.284496736f));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(0.254829592f));
    q = _mm512_mul_ps(_mm512_mul_ps(q, t), expNonPositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)));
    const __mmask16 positive = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 twoPhi = _mm512_mask_sub_ps(q, positive, _mm512_set1_ps(2.0f), q);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), twoPhi);
}

HM_AVX512_BF16 void geluInPlaceAvx512(float* v, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16)
    {
        const int64_t m = std::min<int64_t>(16, n - i);
        storeFloats(v + i, geluAvx512(loadFloats(v + i, m)), m);
    }
}

// One feed-forward task: time steps [0, n) of xb (pairs, rows `stride` apart, already offset to the
// span's first step) through both products into y (rows `ldy` apart, offset likewise). The hidden
// activations (H x n floats, then as pairs) live in buffers of the worker thread, in L2.
HM_AVX512_BF16 void feedForwardSpanAvx512(const PackedConv& fc1, const PackedConv& fc2, const uint32_t* xb,
    int64_t stride, float* y, int64_t ldy, int64_t n)
{
    const int64_t hidden = fc1.cout, kp1 = ceilDiv(fc1.cin, 2), kp2 = ceilDiv(hidden, 2);
    const int64_t hiddenStride = kFeedForwardSteps + 16; // one cache line past the span (see packInput)
    const int64_t tiles = ceilDiv(n, kTile);
    thread_local std::vector<float> h;
    thread_local std::vector<uint32_t> hp;
    h.resize(static_cast<size_t>(hidden * kFeedForwardSteps));
    hp.resize(static_cast<size_t>(kp2 * hiddenStride));
    for (int64_t tile = 0; tile < tiles; ++tile)
    {
        for (int64_t cp0 = 0; cp0 < kp1; cp0 += kPairsPerBlock)
        {
            for (int64_t ob = 0; ob < ceilDiv(hidden, kRows); ++ob)
            {
                convTileAvx512(fc1, xb, h.data(), n, stride, ob, tile * kTile, cp0, std::min(kp1, cp0 + kPairsPerBlock), n);
            }
        }
    }
    geluInPlaceAvx512(h.data(), hidden * n);
    for (int64_t cp = 0; cp < kp2; ++cp)
    {
        packInputAvx512(h.data(), hp.data(), hidden, n, 0, hiddenStride, cp);
    }
    for (int64_t tile = 0; tile < tiles; ++tile)
    {
        for (int64_t cp0 = 0; cp0 < kp2; cp0 += kPairsPerBlock)
        {
            for (int64_t ob = 0; ob < ceilDiv(fc2.cout, kRows); ++ob)
            {
                convTileAvx512(fc2, hp.data(), y, n, hiddenStride, ob, tile * kTile, cp0, std::min(kp2, cp0 + kPairsPerBlock), ldy);
            }
        }
    }
}
#endif

float geluExact(float v)
{
    return 0.5f * v * std::erfc(-v * 0.707106781f);
}

// x (batch, cin, t) as channel pairs (layout above, `pad` zeros each side) in a buffer of the
// calling thread, kept between calls: a fresh multi-MB allocation per call would be fresh pages
// (page faults) every time. The tasks of `runner` get the pointer, never the thread_local itself.
const uint32_t* packInput(const float* x, int64_t cin, int64_t t, int64_t pad, int64_t batch, const TaskRunner& runner,
    int64_t* stride)
{
    const int64_t kp = ceilDiv(cin, 2);
    // Rows of pairs one cache line longer than a multiple of 16: with power-of-two lengths the
    // rows of a tile would map to the same L1 sets (8192 steps: 180 vs 390 GFLOP/s).
    const int64_t s = ceilDiv(ceilDiv(t, kTile) * kTile + 2 * pad, 16) * 16 + 16;
    thread_local std::vector<uint32_t> buffer;
    if (buffer.size() < static_cast<size_t>(batch * kp * s))
    {
        buffer.resize(static_cast<size_t>(batch * kp * s));
    }
    uint32_t* const xp = buffer.data();
    [[maybe_unused]] const bool simd = usesAvx512Bf16();
    runner(batch * kp, [&](int64_t task) {
        const int64_t b = task / kp, cp = task % kp;
#ifdef HM_BF16_X86
        if (simd)
        {
            packInputAvx512(x + b * cin * t, xp + b * kp * s, cin, t, pad, s, cp);
            return;
        }
#endif
        packInputPortable(x + b * cin * t, xp + b * kp * s, cin, t, pad, s, cp);
    });
    *stride = s;
    return xp;
}

} // namespace

uint16_t toBf16(float v)
{
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
    {
        return static_cast<uint16_t>((bits >> 16) | 0x40u); // NaN stays a (quiet) NaN
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>(bits >> 16);
}

bool usesAvx512Bf16()
{
    // HIERAMAMBA_BF16_GEMM=portable forces the portable loop (tests compare the two paths).
    static const bool has = cpuHasAvx512Bf16()
        && !(std::getenv("HIERAMAMBA_BF16_GEMM") != nullptr && std::string(std::getenv("HIERAMAMBA_BF16_GEMM")) == "portable");
    return has;
}

PackedConv packConv(const uint16_t* w, const float* bias, int64_t cout, int64_t cin, int64_t k)
{
    PackedConv p;
    p.cout = cout;
    p.cin = cin;
    p.k = k;
    const int64_t kp = ceilDiv(cin, 2);
    const int64_t blocks = ceilDiv(cout, kRows);
    p.pairs.assign(static_cast<size_t>(blocks * k * kp * kRows), 0u);
    for (int64_t o = 0; o < cout; ++o)
    {
        for (int64_t j = 0; j < k; ++j)
        {
            for (int64_t cp = 0; cp < kp; ++cp)
            {
                const uint32_t lo = w[(o * cin + 2 * cp) * k + j];
                const uint32_t hi = 2 * cp + 1 < cin ? w[(o * cin + 2 * cp + 1) * k + j] : 0u;
                p.pairs[static_cast<size_t>((((o / kRows) * k + j) * kp + cp) * kRows + o % kRows)] = lo | (hi << 16);
            }
        }
    }
    p.bias.assign(static_cast<size_t>(cout), 0.0f);
    if (bias != nullptr)
    {
        std::copy(bias, bias + cout, p.bias.begin());
    }
    return p;
}

std::string runConv(const PackedConv& w, const float* x, float* y, int64_t batch, int64_t t, const TaskRunner& runner)
{
    if (w.k % 2 != 1)
    {
        return "Bf16Conv: the kernel size must be odd (same padding), got " + std::to_string(w.k);
    }
    if (batch <= 0 || t <= 0)
    {
        return "";
    }
    const int64_t pad = (w.k - 1) / 2;
    const int64_t kp = ceilDiv(w.cin, 2);
    const int64_t tiles = ceilDiv(t, kTile);
    const int64_t blocks = ceilDiv(w.cout, kRows);
    const bool simd = usesAvx512Bf16();
    int64_t stride = 0;
    const uint32_t* const xp = packInput(x, w.cin, t, pad, batch, runner, &stride);
    const int64_t tChunks = ceilDiv(tiles, kTilesPerTask);
    const int64_t bGroups = ceilDiv(blocks, kBlocksPerTask);
    runner(batch * tChunks * bGroups, [&](int64_t task) {
        const int64_t b = task / (tChunks * bGroups);
        const int64_t tc = (task / bGroups) % tChunks;
        const int64_t g = task % bGroups;
        const uint32_t* xb = xp + b * kp * stride;
        float* yb = y + b * w.cout * t;
        // Tiles outer: a tile's input pairs (cin/2 x kTile) stay in cache across the row blocks.
        for (int64_t tile = tc * kTilesPerTask; tile < std::min(tiles, (tc + 1) * kTilesPerTask); ++tile)
        {
#ifdef HM_BF16_X86
            if (simd)
            {
                for (int64_t cp0 = 0; cp0 < kp; cp0 += kPairsPerBlock)
                {
                    for (int64_t ob = g * kBlocksPerTask; ob < std::min(blocks, (g + 1) * kBlocksPerTask); ++ob)
                    {
                        convTileAvx512(w, xb, yb, t, stride, ob, tile * kTile, cp0, std::min(kp, cp0 + kPairsPerBlock), t);
                    }
                }
                continue;
            }
#endif
            for (int64_t ob = g * kBlocksPerTask; ob < std::min(blocks, (g + 1) * kBlocksPerTask); ++ob)
            {
                convPortable(w, xb, yb, t, stride, ob, tile * kTile, (tile + 1) * kTile);
            }
        }
    });
    return "";
}

std::string runFeedForward(const PackedConv& fc1, const PackedConv& fc2, const float* x, float* y, int64_t batch,
    int64_t t, const TaskRunner& runner)
{
    if (fc1.k != 1 || fc2.k != 1 || fc2.cin != fc1.cout)
    {
        return "Bf16FeedForward: expected 1x1 convolutions C -> H -> C', got kernel sizes " + std::to_string(fc1.k)
            + ", " + std::to_string(fc2.k) + " and H " + std::to_string(fc1.cout) + " vs " + std::to_string(fc2.cin);
    }
    if (batch <= 0 || t <= 0)
    {
        return "";
    }
    const int64_t hidden = fc1.cout;
    [[maybe_unused]] const bool simd = usesAvx512Bf16();
#ifdef HM_BF16_X86
    const int64_t spans = ceilDiv(t, kFeedForwardSteps);
    if (simd && batch * spans >= kFeedForwardMinTasks)
    {
        int64_t stride = 0;
        const uint32_t* const xp = packInput(x, fc1.cin, t, 0, batch, runner, &stride);
        const int64_t kp1 = ceilDiv(fc1.cin, 2);
        runner(batch * spans, [&](int64_t task) {
            const int64_t b = task / spans, s0 = (task % spans) * kFeedForwardSteps;
            feedForwardSpanAvx512(fc1, fc2, xp + b * kp1 * stride + s0, stride, y + b * fc2.cout * t + s0, t,
                std::min(kFeedForwardSteps, t - s0));
        });
        return "";
    }
#endif
    // Short sequences (too few spans to keep every thread busy) and CPUs without AVX512-BF16: the
    // two products over the whole sequence, GELU in between. With AVX512-BF16 that is bit for bit
    // the span-wise result (the same sums in the same order, the same GELU).
    std::vector<float> h(static_cast<size_t>(batch * hidden * t));
    std::string err = runConv(fc1, x, h.data(), batch, t, runner);
    if (!err.empty())
    {
        return err;
    }
    runner(batch * hidden, [&](int64_t row) {
        float* p = h.data() + row * t;
#ifdef HM_BF16_X86
        if (simd)
        {
            geluInPlaceAvx512(p, t);
            return;
        }
#endif
        for (int64_t i = 0; i < t; ++i)
        {
            p[i] = geluExact(p[i]);
        }
    });
    return runConv(fc2, h.data(), y, batch, t, runner);
}

PackedMatrix packMatrix(const uint16_t* w, int64_t k, int64_t n)
{
    PackedMatrix p;
    p.k = k;
    p.n = n;
    const int64_t kp = ceilDiv(k, 2);
    const int64_t tiles = ceilDiv(n, kTile);
    p.pairs.assign(static_cast<size_t>(tiles * kp * kTile), 0u);
    for (int64_t cp = 0; cp < kp; ++cp)
    {
        for (int64_t j = 0; j < n; ++j)
        {
            const uint32_t lo = w[(2 * cp) * n + j];
            const uint32_t hi = 2 * cp + 1 < k ? w[(2 * cp + 1) * n + j] : 0u;
            p.pairs[static_cast<size_t>(((j / kTile) * kp + cp) * kTile + j % kTile)] = lo | (hi << 16);
        }
    }
    return p;
}

std::string runMatMul(const PackedMatrix& w, const float* x, float* y, int64_t m, const TaskRunner& runner)
{
    if (m <= 0 || w.n <= 0)
    {
        return "";
    }
    const int64_t kp = ceilDiv(w.k, 2);
    const int64_t blocks = ceilDiv(m, kRows);
    const int64_t tiles = ceilDiv(w.n, kTile);
    const bool simd = usesAvx512Bf16();
    // Rows rounded up to whole blocks: the last block's extra rows are read, never stored.
    thread_local std::vector<uint32_t> buffer;
    if (buffer.size() < static_cast<size_t>(blocks * kRows * kp))
    {
        buffer.resize(static_cast<size_t>(blocks * kRows * kp));
    }
    uint32_t* const xb = buffer.data(); // the tasks run on other threads: they get the pointer
    const int64_t rowsPerTask = 64;
    runner(ceilDiv(m, rowsPerTask), [&](int64_t task) {
        for (int64_t row = task * rowsPerTask; row < std::min(m, (task + 1) * rowsPerTask); ++row)
        {
#ifdef HM_BF16_X86
            if (simd)
            {
                packRowsAvx512(x, xb, w.k, row);
                continue;
            }
#endif
            packRowsPortable(x, xb, w.k, row);
        }
    });
    const int64_t mChunks = ceilDiv(blocks, kBlocksPerTask);
    runner(mChunks * tiles, [&](int64_t task) {
        const int64_t mc = task / tiles, nt = task % tiles;
        const int64_t mb0 = mc * kBlocksPerTask, mb1 = std::min(blocks, mb0 + kBlocksPerTask);
#ifdef HM_BF16_X86
        if (simd)
        {
            // Blocks of pairs: the tile of w (pairs x kTile) stays in L1 across the row blocks.
            for (int64_t cp0 = 0; cp0 < kp; cp0 += kPairsPerBlock)
            {
                for (int64_t mb = mb0; mb < mb1; ++mb)
                {
                    matmulTileAvx512(w, xb, y, m, mb, nt, cp0, std::min(kp, cp0 + kPairsPerBlock));
                }
            }
            return;
        }
#endif
        for (int64_t mb = mb0; mb < mb1; ++mb)
        {
            matmulPortable(w, xb, y, m, mb, nt);
        }
    });
    return "";
}

} // namespace hieramamba::cpu_kernels
