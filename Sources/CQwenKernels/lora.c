#include "qwen_lora.h"

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// Plain loops: the dot products and the row updates vectorise (the target is built with
// -ffast-math, so the dot's sum may be reordered).
CLONES
void qwen_lora_rows(const float *x, int n, int in_dim, const float *a, int rank, const float *bt, int out_dim, float scale,
                    float *out, float *tmp) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (long)i * in_dim;
        for (int j = 0; j < rank; j++) {
            const float *aj = a + (long)j * in_dim;
            float s = 0;
            for (int k = 0; k < in_dim; k++) s += xi[k] * aj[k];
            tmp[j] = s * scale;
        }
        float *oi = out + (long)i * out_dim;
        for (int j = 0; j < rank; j++) {
            const float t = tmp[j], *bj = bt + (long)j * out_dim;
            for (int o = 0; o < out_dim; o++) oi[o] += t * bj[o];
        }
    }
}
