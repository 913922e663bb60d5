#define _GNU_SOURCE
#include "qwen_blas.h"
#include "qwen_cpu.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
typedef char *(*str_fn)(void);
typedef int (*int_fn)(void);
typedef void (*setint_fn)(int);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_status = -1;
static char load_error[512];
static char load_chosen[64];
static sgemm_fn p_sgemm;
static str_fn p_corename, p_config;
static int_fn p_get_threads;
static setint_fn p_set_threads;

static void do_load(void) {
    // Respect a core type the user chose; otherwise pick the one this CPU can run.
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (user == NULL || user[0] == 0) {
        const char *core = qwen_cpu_coretype();
        if (core[0] != 0) {
            setenv("OPENBLAS_CORETYPE", core, 1);
            snprintf(load_chosen, sizeof load_chosen, "%s", core);
        }
    }
    // OpenBLAS's idle workers spin (sched_yield) for 2^28 cycles after each call by default, on
    // the cores our own workers need between two sgemm calls (tile expansion, attention, LoRA):
    // LoRA training with f32 compute went 46 -> 56 tok/s on 2 cores with them put to sleep at
    // once (2^4 cycles, the least OpenBLAS takes); inference measured the same. A value the user
    // set is kept.
    if (getenv("OPENBLAS_THREAD_TIMEOUT") == NULL) setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1);
    const char *names[] = {getenv("QWEN_SERVE_OPENBLAS"), "libopenblas.so.0", "libopenblas.so",
                           "libopenblasp.so.0", NULL};
    void *h = NULL;
    char last[256] = "";
    for (int i = 0; i < 4; i++) {
        if (names[i] == NULL || names[i][0] == 0) continue;
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) break;
        const char *e = dlerror();
        snprintf(last, sizeof last, "%s", e ? e : "");
    }
    if (!h) {
        snprintf(load_error, sizeof load_error,
                 "cannot load OpenBLAS (install libopenblas-dev, or set QWEN_SERVE_OPENBLAS to "
                 "the library's path): %s", last);
        return;
    }
    p_sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    p_corename = (str_fn)dlsym(h, "openblas_get_corename");
    p_config = (str_fn)dlsym(h, "openblas_get_config");
    p_get_threads = (int_fn)dlsym(h, "openblas_get_num_threads");
    p_set_threads = (setint_fn)dlsym(h, "openblas_set_num_threads");
    if (!p_sgemm) {
        snprintf(load_error, sizeof load_error, "the loaded OpenBLAS has no cblas_sgemm");
        return;
    }
    load_status = 0;
}

int qwen_blas_load(char *err, int errlen, char *chosen, int chosenlen) {
    pthread_once(&once, do_load);
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", load_error);
    if (chosen && chosenlen > 0) snprintf(chosen, (size_t)chosenlen, "%s", load_chosen);
    return load_status;
}

const char *qwen_blas_corename(void) { return p_corename ? p_corename() : "unknown"; }
const char *qwen_blas_config(void) { return p_config ? p_config() : "unknown"; }
int qwen_blas_num_threads(void) { return p_get_threads ? p_get_threads() : 1; }
void qwen_blas_set_num_threads(int n) { if (p_set_threads) p_set_threads(n); }

void qwen_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (__builtin_expect(p_sgemm == NULL, 0)) {
        pthread_once(&once, do_load);
        if (p_sgemm == NULL) {
            fprintf(stderr, "qwen-serve: %s\n", load_error);
            abort();
        }
    }
    p_sgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, M, N, K, alpha, A, lda,
            B, ldb, beta, C, ldc);
}
