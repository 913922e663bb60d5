// Products of quantized weights with activations quantized to 8 bits (the `int8` compute mode):
// each block's dot product is exact in integers (AVX-512 VNNI), then scaled in f32 — the method
// llama.cpp uses for quantized models, and 2–3× the f32 multiply-adds per instruction.
#ifndef QWEN_INT8_H
#define QWEN_INT8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Whether `type` (a ggml type number) has integer weights this module can repack.
int qwen_i8_supported(int type);
/// Values per weight scale in the repacked form (16 for Q6_K, else 32).
int qwen_i8_group(int type);
/// Whether the repacked form has an additive term per 32 values (Q4_1, Q5_1, Q4_K, Q5_K).
int qwen_i8_has_min(int type);

/// Bytes per panel and group of qwen_i8_group(type) values: 16 rows × g values at 8, 4 or 5
/// bits each (Q8_0/Q6_K; Q4_0/Q4_1/Q4_K; Q5_0/Q5_1/Q5_K).
long qwen_i8_group_bytes(int type);

/// Repacks rows [16·panel0, 16·panel1) of W (`rows` × `cols`, stored as `type`) into panels of 16
/// rows: per panel and group of g values, qwen_i8_group_bytes(type) bytes of the weights'
/// integers plus an offset (so they are unsigned) in the order the kernel reads them, then 16 f32
/// scales, and (for types with a min term) 16 f32 mins per 32 values. Rows past `rows` are zero.
/// q: panels × (cols/g) × group bytes; scale: panels × (cols/g) × 16; min: panels × (cols/32) × 16.
void qwen_i8_pack(int type, const void *w, int rows, int cols, int panel0, int panel1,
                  uint8_t *q, float *scale, float *min);

/// Quantizes n rows of x (`cols` values, `ldx` apart; cols a multiple of 32) per 32 values:
/// d = max|x| / 127, q = round(x / d). Writes q (n × cols), d (n × cols/32) and the sums of q
/// per 16 values (n × cols/16).
void qwen_q8_quantize(const float *x, int n, int cols, int ldx, int8_t *q, float *d, int32_t *sums16);
/// x[i·cols + k] = d · q, the values the integer products see.
void qwen_q8_dequantize(const int8_t *q, const float *d, int n, int cols, float *x);

/// The per-row terms a product with `type`'s panels needs, from quantize's d and sums: per input
/// row and group of qwen_i8_group(type) values, the offset correction −offset·Σq (corr) and the
/// input scale (dx); per row and 32 values, d·Σq for the min terms (dmin).
/// corr, dx: n × (cols/g); dmin: n × (cols/32).
void qwen_i8_terms(int type, const float *xd, const int32_t *xs16, int n, int cols, int32_t *corr, float *dx, float *dmin);

/// Kernel sets for the products: plain C, AVX2 (+FMA), AVX-512 VNNI, AVX-VNNI (256-bit vpdpbusd,
/// VEX-encoded), and vnni256 — the AVX-VNNI code with the EVEX encoding AVX-512 VNNI CPUs run, so
/// that code is tested where AVX-VNNI is missing. All give bit-identical results.
enum { QWEN_I8_PORTABLE = 0, QWEN_I8_AVX2 = 1, QWEN_I8_VNNI = 2, QWEN_I8_AVXVNNI = 3, QWEN_I8_VNNI256 = 4 };
/// The set in use: the best the CPU has (vnni, avxvnni, avx2, portable in that order), or the one
/// QWEN_INT8_KERNEL names (portable, avx2, vnni, avxvnni, vnni256) if this CPU runs it.
int qwen_i8_kernel(void);
/// A set's name, as QWEN_INT8_KERNEL spells it.
const char *qwen_i8_kernel_name(int set);
/// Whether this CPU runs the set.
int qwen_i8_kernel_runs(int set);

/// For panels [panel0, panel1) of a repacked W and n quantized input rows (xq, with their terms):
/// out[i·ldo + r] = Σ_k W[r,k]·d·q[i,k] (added to out when `accumulate`). `kernel`: one of the
/// sets above (a set the CPU lacks runs as plain C), or −1 for qwen_i8_kernel().
void qwen_i8_matmul(int type, const uint8_t *q, const float *scale, const float *min, int rows, int cols,
                    int panel0, int panel1, const int8_t *xq, const int32_t *corr, const float *dx, const float *dmin, int n,
                    float *out, int ldo, int accumulate, int kernel);

#ifdef __cplusplus
}
#endif
#endif
