// make bench-kernels: one thread's speed of the compact f32 products (qwen_quant_matmul) per stored
// type, on random blocks with sane f16 scales, at the kernel level in use (QWEN_CPU_LEVEL caps it).
//   bench_kernels TYPE ROWS COLS [N]   — ggml type number, matrix shape, input rows (default 1)
//   BENCH_INT8=1 bench_kernels …     — the int8 mode's product instead (qwen_i8_matmul on the
//                                      repacked panels, inputs quantized once outside the timing)
// Prints the best of 7 × 5 calls: milliseconds, bytes read per second, and multiply-adds per second.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "qwen_cpu.h"
#include "qwen_quant.h"
#include "qwen_int8.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s TYPE ROWS COLS [N]\n", argv[0]);
        return 2;
    }
    const int type = atoi(argv[1]), rows = atoi(argv[2]), cols = atoi(argv[3]), n = argc > 4 ? atoi(argv[4]) : 1;
    const int kquant = type == QWEN_Q4_K || type == QWEN_Q5_K || type == QWEN_Q6_K, bs = kquant ? 256 : 32;
    const long rb = qwen_quant_row_bytes(type, cols);
    if (rows <= 0 || cols <= 0 || n <= 0 || rb <= 0 || cols % bs) {
        fprintf(stderr, "bench_kernels: type %d does not take %d × %d\n", type, rows, cols);
        return 2;
    }
    const long bb = rb / (cols / bs);
    uint8_t *w = malloc((size_t)rb * rows);
    float *x = malloc(sizeof(float) * (size_t)cols * n), *out = malloc(sizeof(float) * (size_t)rows * n);
    if (!w || !x || !out) return 1;
    srand(1);
    for (long i = 0; i < rb * rows; i++) w[i] = (uint8_t)rand();
    // Block scales (and mins) of 2^-7 (f16 0x2000), so no block holds Inf or NaN.
    for (long r = 0; r < rows; r++)
        for (int b = 0; b < cols / bs; b++) {
            uint8_t *p = w + r * rb + b * bb;
            if (type == QWEN_Q6_K) { p[208] = 0; p[209] = 0x20; continue; }
            if (type == QWEN_F16 || type == QWEN_BF16 || type == QWEN_F32) continue;
            p[0] = 0; p[1] = 0x20;
            if (type == QWEN_Q4_1 || type == QWEN_Q5_1 || type == QWEN_Q4_K || type == QWEN_Q5_K) { p[2] = 0; p[3] = 0x20; }
        }
    if (type == QWEN_F16 || type == QWEN_BF16)  // clear exponent bits that would make Inf/NaN patterns
        for (long i = 1; i < rb * rows; i += 2) w[i] &= 0x3F;
    for (long i = 0; i < (long)cols * n; i++) x[i] = (float)(rand() % 1000) / 1000.0f;
    const int int8 = getenv("BENCH_INT8") && atoi(getenv("BENCH_INT8")) && qwen_i8_supported(type);
    const int panels = (rows + 15) / 16, g = int8 ? qwen_i8_group(type) : 32;
    uint8_t *pq = 0;
    float *ps = 0, *pm = 0, *xd = 0, *dx = 0, *dmin = 0;
    int8_t *xq = 0;
    int32_t *s16 = 0, *corr = 0;
    if (int8) {
        pq = malloc((size_t)panels * (cols / g) * qwen_i8_group_bytes(type));
        ps = malloc(sizeof(float) * (size_t)panels * (cols / g) * 16);
        pm = malloc(sizeof(float) * (size_t)panels * (cols / 32) * 16);
        xq = malloc((size_t)n * cols);
        xd = malloc(sizeof(float) * (size_t)n * (cols / 32));
        s16 = malloc(sizeof(int32_t) * (size_t)n * (cols / 16));
        corr = malloc(sizeof(int32_t) * (size_t)n * (cols / g));
        dx = malloc(sizeof(float) * (size_t)n * (cols / g));
        dmin = malloc(sizeof(float) * (size_t)n * (cols / 32));
        if (!pq || !ps || !pm || !xq || !xd || !s16 || !corr || !dx || !dmin) return 1;
        qwen_i8_pack(type, w, rows, cols, 0, panels, pq, ps, pm);
        qwen_q8_quantize(x, n, cols, cols, xq, xd, s16);
        qwen_i8_terms(type, xd, s16, n, cols, corr, dx, dmin);
    }
#define PRODUCT()                                                                                                  \
    (int8 ? qwen_i8_matmul(type, pq, ps, pm, rows, cols, 0, panels, xq, corr, dx, dmin, n, out, rows, 0, -1)        \
          : qwen_quant_matmul(type, w, cols, 0, rows, x, n, cols, out, rows, 0))
    for (int it = 0; it < 3; it++) PRODUCT();
    double best = 1e9;
    for (int rep = 0; rep < 7; rep++) {
        const double t = now();
        for (int it = 0; it < 5; it++) PRODUCT();
        const double d = (now() - t) / 5;
        if (d < best) best = d;
    }
    printf("%stype %d %d×%d n=%d level %s: %.3f ms, %.2f GB/s, %.2f G multiply-adds/s\n", int8 ? "int8 " : "", type, rows, cols, n,
           qwen_cpu_level_name(qwen_cpu_level()), best * 1e3, (double)rb * rows / best / 1e9, (double)rows * cols * n / best / 1e9);
    free(w); free(x); free(out);
    return 0;
}
