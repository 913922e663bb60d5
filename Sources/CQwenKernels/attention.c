#include "qwen_attention.h"
#include <math.h>
#include <string.h>

// Built for AVX-512, AVX2 and plain x86-64; the loader picks the one this CPU runs.
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

static inline float dot(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

CLONES
void qwen_attend_paged(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch) {
    const int group = heads / kv_heads;
    const int kvw = kv_heads * hd;
    for (int g = 0; g < kv_heads; g++) {
        const float *qg = q + (size_t)g * group * hd;
        // Scores for the group's query heads, one key row at a time (each key read once).
        for (int t = 0; t < ctx; t++) {
            const float *k = kbase + ((size_t)blocks[t / block_size] * block_size + t % block_size) * kvw + (size_t)g * hd;
            for (int h = 0; h < group; h++) scratch[(size_t)h * ctx + t] = dot(qg + (size_t)h * hd, k, hd) * scale;
        }
        for (int h = 0; h < group; h++) {
            float *s = scratch + (size_t)h * ctx;
            float m = -INFINITY;
            for (int t = 0; t < ctx; t++) m = s[t] > m ? s[t] : m;
            float sum = 0;
            for (int t = 0; t < ctx; t++) {
                s[t] = expf(s[t] - m);
                sum += s[t];
            }
            float inv = 1.0f / sum;
            for (int t = 0; t < ctx; t++) s[t] *= inv;
        }
        float *og = out + (size_t)g * group * hd;
        memset(og, 0, sizeof(float) * (size_t)group * hd);
        for (int t = 0; t < ctx; t++) {
            const float *v = vbase + ((size_t)blocks[t / block_size] * block_size + t % block_size) * kvw + (size_t)g * hd;
            for (int h = 0; h < group; h++) {
                const float p = scratch[(size_t)h * ctx + t];
                float *o = og + (size_t)h * hd;
                for (int i = 0; i < hd; i++) o[i] += p * v[i];
            }
        }
    }
}
