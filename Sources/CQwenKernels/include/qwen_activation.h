// Elementwise activations that are worth vectorising by hand (libm's expf is scalar).
#ifndef QWEN_ACTIVATION_H
#define QWEN_ACTIVATION_H

#ifdef __cplusplus
extern "C" {
#endif

/// gate[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i], for i < n.
/// exp is a range-reduced polynomial within 2 ulp of expf.
void qwen_silu_mul(float *gate, const float *up, long n);

/// Cross-entropy of one row of logits z[0..<n] against `target`, with its gradient in place:
/// returns log Σ exp(z) − z[target], and z becomes scale · (softmax(z) − onehot(target)).
/// When target_is_top is given, it is set to whether the target is the row's argmax.
float qwen_cross_entropy_row(float *z, long n, long target, float scale, int *target_is_top);

#ifdef __cplusplus
}
#endif
#endif
