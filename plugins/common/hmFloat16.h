// Bit-exact fp16 / bf16 <-> fp32 conversions for host code.
//
// The CPU kernel and the unit tests must read and write the same 16-bit encodings as torch and
// CUDA (IEEE binary16, bfloat16) without depending on compiler extensions such as _Float16, so
// the conversions are done on the bit patterns. Rounding is round-to-nearest-even, as in
// __float2half_rn / __float2bfloat16_rn.
#pragma once

#include <cstdint>
#include <cstring>

namespace hieramamba
{

// Storage-only 16-bit types: distinct C++ types so that templates dispatch on them.
struct Half
{
    uint16_t bits;
};
struct BFloat16
{
    uint16_t bits;
};

inline uint32_t floatBits(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
}

inline float bitsFloat(uint32_t u)
{
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

inline float halfToFloat(uint16_t h)
{
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0x1Fu) // inf / nan (keep the payload)
    {
        return bitsFloat(sign | 0x7F800000u | (mant << 13));
    }
    if (exp == 0)
    {
        if (mant == 0)
        {
            return bitsFloat(sign);
        }
        // Subnormal half: normalise into a float exponent.
        int e = -1;
        do
        {
            mant <<= 1;
            ++e;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3FFu;
        return bitsFloat(sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant << 13));
    }
    return bitsFloat(sign | (exp + (127 - 15)) << 23 | (mant << 13));
}

inline uint16_t floatToHalf(float f)
{
    const uint32_t u = floatBits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t absu = u & 0x7FFFFFFFu;
    if (absu >= 0x7F800000u) // inf / nan: quiet nan keeps a mantissa bit set
    {
        return static_cast<uint16_t>(sign | 0x7C00u | (absu > 0x7F800000u ? 0x200u | ((absu >> 13) & 0x3FFu) : 0u));
    }
    if (absu >= 0x477FF000u) // rounds to >= 65520: overflow to inf
    {
        return static_cast<uint16_t>(sign | 0x7C00u);
    }
    if (absu < 0x38800000u) // below the smallest normal half (2^-14): subnormal or zero
    {
        if (absu < 0x33000000u) // below half of the smallest subnormal (2^-25): rounds to zero
        {
            return static_cast<uint16_t>(sign);
        }
        const uint32_t e = absu >> 23;
        const uint32_t mant = (absu & 0x7FFFFFu) | 0x800000u;
        const uint32_t shift = 126u - e; // 14..24 for this range
        uint32_t result = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (result & 1u)))
        {
            ++result;
        }
        return static_cast<uint16_t>(sign | result);
    }
    // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
    uint32_t h = ((absu - 0x38000000u) >> 13);
    const uint32_t rem = absu & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
    {
        ++h; // a carry into the exponent is the correct rounding
    }
    return static_cast<uint16_t>(sign | h);
}

inline float bf16ToFloat(uint16_t b)
{
    return bitsFloat(static_cast<uint32_t>(b) << 16);
}

inline uint16_t floatToBf16(float f)
{
    const uint32_t u = floatBits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) // nan: keep it a (quiet) nan
    {
        return static_cast<uint16_t>((u >> 16) | 0x40u);
    }
    const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float toFloat(float v)
{
    return v;
}
inline float toFloat(Half v)
{
    return halfToFloat(v.bits);
}
inline float toFloat(BFloat16 v)
{
    return bf16ToFloat(v.bits);
}

template <typename T>
T fromFloat(float v);
template <>
inline float fromFloat<float>(float v)
{
    return v;
}
template <>
inline Half fromFloat<Half>(float v)
{
    return Half{floatToHalf(v)};
}
template <>
inline BFloat16 fromFloat<BFloat16>(float v)
{
    return BFloat16{floatToBf16(v)};
}

} // namespace hieramamba
