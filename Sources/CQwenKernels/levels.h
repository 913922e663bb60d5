// Per-level instances of plain C kernels (internal to CQwenKernels). A body written once as an
// always-inline function is compiled for AVX-512, AVX2 and plain x86-64 by wrappers carrying
// these attributes, and the caller picks one with qwen_cpu_level() — not with target_clones,
// whose resolver asks the CPU and would ignore QWEN_CPU_LEVEL.
#ifndef QWEN_LEVELS_H
#define QWEN_LEVELS_H
#include "qwen_cpu.h"

#if defined(__x86_64__)
#define QWEN_X86 1
#define AT_V4 __attribute__((target("arch=x86-64-v4")))
#define AT_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define QWEN_X86 0
#define AT_V4
#define AT_V3
#endif
#define ALWAYS_INLINE inline __attribute__((always_inline))

/// Defines NAME_v4, NAME_v3 and NAME_v1 (void functions of PARAMS calling BODY(ARGS)) and NAME,
/// which calls the one for the level in use.
#define QWEN_PER_LEVEL(NAME, BODY, PARAMS, ARGS)                                                   \
    AT_V4 static void NAME##_v4 PARAMS { BODY ARGS; }                                               \
    AT_V3 static void NAME##_v3 PARAMS { BODY ARGS; }                                               \
    static void NAME##_v1 PARAMS { BODY ARGS; }                                                     \
    static void NAME PARAMS {                                                                       \
        switch (qwen_cpu_level()) {                                                                 \
        case QWEN_LEVEL_AVX512: NAME##_v4 ARGS; break;                                              \
        case QWEN_LEVEL_AVX2: NAME##_v3 ARGS; break;                                                \
        default: NAME##_v1 ARGS; break;                                                             \
        }                                                                                           \
    }

#endif
