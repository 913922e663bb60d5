// make bench-kernels: one thread's speed of the compact f32 products (qwen_quant_matmul) per stored
// type, on random blocks with sane f16 scales, at the kernel level in use (QWEN_CPU_LEVEL caps it).
//   bench_kernels TYPE ROWS COLS [N]   — ggml type number, matrix shape, input rows (default 1)
// Prints the best of 7 × 5 calls: milliseconds, bytes read per second, and multiply-adds per second.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "qwen_cpu.h"
#include "qwen_quant.h"

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
    for (int it = 0; it < 3; it++) qwen_quant_matmul(type, w, cols, 0, rows, x, n, cols, out, rows, 0);
    double best = 1e9;
    for (int rep = 0; rep < 7; rep++) {
        const double t = now();
        for (int it = 0; it < 5; it++) qwen_quant_matmul(type, w, cols, 0, rows, x, n, cols, out, rows, 0);
        const double d = (now() - t) / 5;
        if (d < best) best = d;
    }
    printf("type %d %d×%d n=%d level %s: %.3f ms, %.2f GB/s, %.2f G multiply-adds/s\n", type, rows, cols, n,
           qwen_cpu_level_name(qwen_cpu_level()), best * 1e3, (double)rb * rows / best / 1e9, (double)rows * cols * n / best / 1e9);
    free(w); free(x); free(out);
    return 0;
}
