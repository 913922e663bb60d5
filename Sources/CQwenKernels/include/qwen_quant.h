// Matrix-vector products straight from compact weight storage (bf16, f16 and ggml's
// quantized blocks), for the few-row products of decoding where memory traffic decides.
#ifndef QWEN_QUANT_H
#define QWEN_QUANT_H

#ifdef __cplusplus
extern "C" {
#endif

/// Storage codes, equal to ggml's type numbers.
enum { QWEN_F32 = 0, QWEN_F16 = 1, QWEN_Q4_0 = 2, QWEN_Q4_1 = 3, QWEN_Q5_0 = 6, QWEN_Q5_1 = 7, QWEN_Q8_0 = 8,
       QWEN_Q4_K = 12, QWEN_Q5_K = 13, QWEN_Q6_K = 14, QWEN_BF16 = 30 };

/// For rows r in [row0, row1) of W (`cols` wide, stored as `type`) and inputs i < n:
/// out[i*ldo + r] = dot(W[r], x[i*ldx ...]) (added to out when `accumulate`).
/// Each block is expanded to f32 exactly as the reference dequantization does, so the
/// result equals an f32 product up to summation order.
void qwen_quant_matmul(int type, const void *w, int cols, int row0, int row1, const float *x, int n, int ldx,
                       float *out, int ldo, int accumulate);

/// out[0..<cols] = one row of `cols` values stored as `type`, expanded exactly as the
/// reference dequantization does.
void qwen_dequant_row(int type, const void *row, int cols, float *out);
/// Bytes of one row of `cols` values stored as `type`.
long qwen_quant_row_bytes(int type, int cols);

/// Quantizes `rows` rows of `cols` f32 values (cols a multiple of 32) into Q8_0 or Q4_0 blocks
/// with ggml's reference rules; returns the bytes written, or −1 for another type.
long qwen_quantize_rows(int type, const float *x, long rows, int cols, void *out);

#ifdef __cplusplus
}
#endif
#endif
