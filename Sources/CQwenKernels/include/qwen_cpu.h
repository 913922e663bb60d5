// What this CPU can run, from cpuid (and the OS's saved vector state), detected once.
#ifndef QWEN_CPU_H
#define QWEN_CPU_H

#ifdef __cplusplus
extern "C" {
#endif

/// AVX-512 F, BW, DQ and VL: what every AVX-512 kernel here assumes.
int qwen_cpu_has_avx512(void);
/// The above and AVX512_BF16.
int qwen_cpu_has_avx512bf16(void);
/// The above and AVX512_VNNI (the int8 kernels).
int qwen_cpu_has_avx512vnni(void);
/// AVX2 with FMA.
int qwen_cpu_has_avx2(void);
/// The above and AVX-VNNI (VEX-encoded 256-bit vpdpbusd: Alder Lake and later, Zen 5).
int qwen_cpu_has_avxvnni(void);
/// The OpenBLAS core type that suits this CPU: "SkylakeX" with AVX-512, "Haswell" with
/// AVX2+FMA, "" otherwise.
const char *qwen_cpu_coretype(void);

/// The sum of n floats, read as fast as the CPU can (the benchmarks' memory-bandwidth probe).
float qwen_read_sum(const float *p, long n);

#ifdef __cplusplus
}
#endif
#endif
