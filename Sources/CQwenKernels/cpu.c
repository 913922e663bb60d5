#include "qwen_cpu.h"
#include <pthread.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int avx512, avx512bf16, avx512vnni, avx2fma, avxvnni;

static void detect(void) {
    __builtin_cpu_init();
    avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    avx512bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    avx512vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    avx2fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avxvnni = avx2fma && __builtin_cpu_supports("avxvnni");
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
    return avx512 ? "SkylakeX" : avx2fma ? "Haswell" : "";
}
