// What the CPU running this process supports, for kernels that pick a code path once per process
// (the HydraScan CPU step, the bfloat16 bundles' kernels). False on other architectures.
#pragma once

namespace hieramamba
{

inline bool cpuHasAvx512()
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

// AVX512-BF16 (VDPBF16PS) with the AVX512-BW byte/word operations the packing uses.
inline bool cpuHasAvx512Bf16()
{
#if defined(__x86_64__)
    return cpuHasAvx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

} // namespace hieramamba
