// LoRA updates for the few rows of a decoding step, where BLAS calls on such thin matrices
// cost more in calls and threads than in arithmetic.
#ifndef QWEN_LORA_H
#define QWEN_LORA_H

#ifdef __cplusplus
extern "C" {
#endif

/// out[i][o] += Σ_j (scale · x_i · a_j) · bt[j][o] for i < n, o < out_dim: the update
/// scale · B · A with a = A [rank × in_dim] and bt = Bᵀ [rank × out_dim]. tmp: n × rank floats.
void qwen_lora_rows(const float *x, int n, int in_dim, const float *a, int rank, const float *bt, int out_dim, float scale,
                    float *out, float *tmp);

#ifdef __cplusplus
}
#endif
#endif
