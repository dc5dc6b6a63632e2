// The instruction sets prefkit's C++ operators compile their loops for.
//
// PREFKIT_CLONES on a function compiles it for AVX-512, AVX2 and the baseline (GCC/clang
// target_clones; the loader picks the one this CPU runs through an ifunc), so the library needs
// no -march flag and runs on any x86-64 Linux. Elsewhere (other CPUs, no ifunc) it is empty: one
// baseline build. Functions it calls that should use the wider instructions are PREFKIT_INLINE
// (inlined into each clone).
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PREFKIT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PREFKIT_CLONES
#endif
#define PREFKIT_INLINE __attribute__((always_inline)) inline
