#include "qwen_cpu.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int hw_level, level, level_request_ok = 1;
static int avx512, avx512bf16, avx512vnni, avx2fma, avxvnni;

static void set_flags(void);

static int level_named(const char *s) {
    for (int l = QWEN_LEVEL_PORTABLE; l <= QWEN_LEVEL_AVX512; l++)
        if (!strcmp(s, qwen_cpu_level_name(l))) return l;
    return -1;
}

// Every feature test goes through the level: QWEN_CPU_LEVEL caps what the hardware has, so a
// machine with AVX-512 can run (and test) its AVX2 and portable paths too.
static void detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const int hw512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    const int hw2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    hw_level = hw2 && hw512 ? QWEN_LEVEL_AVX512 : hw2 ? QWEN_LEVEL_AVX2 : QWEN_LEVEL_PORTABLE;
#else
    hw_level = QWEN_LEVEL_PORTABLE;
#endif
    level = hw_level;
    const char *e = getenv("QWEN_CPU_LEVEL");
    if (e && e[0]) {
        const int asked = level_named(e);
        if (asked < 0) level_request_ok = 0;
        else if (asked < level) level = asked;
    }
    set_flags();
}

static void set_flags(void) {
#if defined(__x86_64__) || defined(__i386__)
    avx512 = level >= QWEN_LEVEL_AVX512;
    avx512bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    avx512vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    avx2fma = level >= QWEN_LEVEL_AVX2;
    avxvnni = avx2fma && __builtin_cpu_supports("avxvnni");
#endif
}

int qwen_cpu_set_level(int l) {
    pthread_once(&once, detect);
    level = l < QWEN_LEVEL_PORTABLE ? QWEN_LEVEL_PORTABLE : l > hw_level ? hw_level : l;
    set_flags();
    return level;
}

int qwen_cpu_level(void) {
    pthread_once(&once, detect);
    return level;
}

int qwen_cpu_hardware_level(void) {
    pthread_once(&once, detect);
    return hw_level;
}

int qwen_cpu_level_request_valid(void) {
    pthread_once(&once, detect);
    return level_request_ok;
}

const char *qwen_cpu_level_name(int l) {
    switch (l) {
    case QWEN_LEVEL_AVX512: return "avx512";
    case QWEN_LEVEL_AVX2: return "avx2";
    default: return "portable";
    }
}

int qwen_cpu_has_avx512(void) {
    pthread_once(&once, detect);
    return avx512;
}

int qwen_cpu_has_avx512bf16(void) {
    pthread_once(&once, detect);
    return avx512bf16;
}

int qwen_cpu_has_avx512vnni(void) {
    pthread_once(&once, detect);
    return avx512vnni;
}

int qwen_cpu_has_avxvnni(void) {
    pthread_once(&once, detect);
    return avxvnni;
}

int qwen_cpu_has_avx2(void) {
    pthread_once(&once, detect);
    return avx2fma;
}

const char *qwen_cpu_coretype(void) {
    pthread_once(&once, detect);
#if defined(__x86_64__)
    // At the portable level OpenBLAS is held to SSE3 kernels as well.
    return level == QWEN_LEVEL_AVX512 ? "SkylakeX" : level == QWEN_LEVEL_AVX2 ? "Haswell" : "Prescott";
#else
    return "";
#endif
}
