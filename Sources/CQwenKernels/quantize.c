// Quantizing f32 rows into ggml's Q8_0, Q4_0 and Q4_K blocks, with ggml's reference rules (so a
// checkpoint quantized here equals one quantized by llama.cpp's tools): per 32 values a scale d
// stored as f16 and the values as round(x / d) — Q8_0: d = max|x| / 127, q in [−127, 127];
// Q4_0: d = −m / 8 with m the value of largest magnitude, q = min(15, ⌊x / d + 8.5⌋).
#include "ggml_blocks.h"
#include "qwen_quant.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

// Q4_K, ggml's reference rules (quantize_row_q4_K_ref): per 256 values eight sub-blocks of 32,
// each with a 4-bit scale and min found by a weighted least-squares search over 21 candidate
// scales (weights av|x| + |x_i|), the eight scales and mins then stored in 6 bits against two
// f16 super-block factors, and the values re-rounded against the stored ones. Written with the
// same operations in the same order, and compiled without fast-math reassociation or
// contraction, as the reference's arithmetic is.
#pragma float_control(precise, on, push)
#pragma clang fp contract(off)

/// ggml's nearest_int: round half to even through the float's mantissa (|x| < 2^22).
static inline int nearest_int(float f) {
    float v = f + 12582912.f;
    int i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min, uint8_t *Laux,
                              float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_error += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/// One 256-value block → 144 bytes: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 of nibbles.
static void quantize_block_q4_k(const float *x, uint8_t *y) {
    uint8_t L[256], Laux[32], scales6[12] = {0};
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scales6[j] = ls;
            scales6[j + 4] = lm;
        } else {
            scales6[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scales6[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales6[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    const uint16_t dh = qwen_f16_from_f32(max_scale / 63.f), dminh = qwen_f16_from_f32(max_min / 63.f);
    for (int j = 0; j < 8; ++j) {
        float sc, m;
        scale_min_k4(j, scales6, &sc, &m);
        const float d = qwen_f16_table[dh] * sc;
        if (!d) continue;
        const float dm = qwen_f16_table[dminh] * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : l > 15 ? 15 : l);
        }
    }
    memcpy(y, &dh, 2);
    memcpy(y + 2, &dminh, 2);
    memcpy(y + 4, scales6, 12);
    uint8_t *q = y + 16;
    for (int j = 0; j < 256; j += 64) {
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        q += 32;
    }
}
#pragma float_control(pop)

long qwen_quantize_rows(int type, const float *x, long rows, int cols, void *out) {
    if (type == QWEN_Q4_K) {
        if (cols % 256 != 0) return -1;
        const long blocks = rows * (cols / 256);
        for (long b = 0; b < blocks; b++) quantize_block_q4_k(x + b * 256, (uint8_t *)out + b * 144);
        return blocks * 144;
    }
    if (cols % 32 != 0 || (type != QWEN_Q8_0 && type != QWEN_Q4_0)) return -1;
    uint8_t *o = out;
    const long blocks = rows * (cols / 32);
    for (long b = 0; b < blocks; b++) {
        const float *v = x + b * 32;
        if (type == QWEN_Q8_0) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(v[j]));
            const float d = amax / 127, id = d ? 1 / d : 0;
            const uint16_t dh = qwen_f16_from_f32(d);
            memcpy(o, &dh, 2);
            for (int j = 0; j < 32; j++) o[2 + j] = (uint8_t)(int8_t)roundf(v[j] * id);
            o += 34;
        } else {
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++) {
                if (amax < fabsf(v[j])) { amax = fabsf(v[j]); max = v[j]; }
            }
            const float d = max / -8, id = d ? 1 / d : 0;
            const uint16_t dh = qwen_f16_from_f32(d);
            memcpy(o, &dh, 2);
            for (int j = 0; j < 16; j++) {
                const float a = v[j] * id + 8.5f, c = v[16 + j] * id + 8.5f;
                const int q0 = (int)a < 15 ? (int)a : 15, q1 = (int)c < 15 ? (int)c : 15;
                o[2 + j] = (uint8_t)(q0 | (q1 << 4));
            }
            o += 18;
        }
    }
    return (long)(o - (uint8_t *)out);
}
