// What this CPU can run, from cpuid (and the OS's saved vector state), detected once.
#ifndef QWEN_CPU_H
#define QWEN_CPU_H

#ifdef __cplusplus
extern "C" {
#endif

/// Kernel levels: plain x86-64 (or any other architecture), AVX2 with FMA and F16C, AVX-512
/// (F, BW, DQ, VL). Every kernel dispatches on the level, never on the CPU directly.
enum { QWEN_LEVEL_PORTABLE = 0, QWEN_LEVEL_AVX2 = 1, QWEN_LEVEL_AVX512 = 2 };
/// The level in use: the best this CPU has, capped by QWEN_CPU_LEVEL (avx512|avx2|portable).
int qwen_cpu_level(void);
/// The best level this CPU has, whatever QWEN_CPU_LEVEL says.
int qwen_cpu_hardware_level(void);
/// 0 when QWEN_CPU_LEVEL is set to something that is not a level name (it is then ignored).
int qwen_cpu_level_request_valid(void);
/// Sets the level for the rest of the process (capped at the hardware's) and returns it — for
/// tests that compare levels in one process; not safe while kernels run on other threads. The
/// int8 kernel set, chosen once, does not follow it (its tests name their sets).
int qwen_cpu_set_level(int level);
/// A level's name, as QWEN_CPU_LEVEL spells it.
const char *qwen_cpu_level_name(int level);

/// AVX-512 F, BW, DQ and VL: what every AVX-512 kernel here assumes (and the level allows it).
int qwen_cpu_has_avx512(void);
/// The above and AVX512_BF16.
int qwen_cpu_has_avx512bf16(void);
/// The above and AVX512_VNNI (the int8 kernels).
int qwen_cpu_has_avx512vnni(void);
/// AVX2 with FMA and F16C (the level allows it).
int qwen_cpu_has_avx2(void);
/// The above and AVX-VNNI (VEX-encoded 256-bit vpdpbusd: Alder Lake and later, Zen 5).
int qwen_cpu_has_avxvnni(void);
/// The OpenBLAS core type that suits the level: "SkylakeX", "Haswell" or "Prescott" (x86-64),
/// "" on other architectures.
const char *qwen_cpu_coretype(void);

/// The sum of n floats, read as fast as the CPU can (the benchmarks' memory-bandwidth probe).
float qwen_read_sum(const float *p, long n);

#ifdef __cplusplus
}
#endif
#endif
