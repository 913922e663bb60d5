// Quantizing f32 rows into ggml's Q8_0 and Q4_0 blocks, with ggml's reference rules (so a
// checkpoint quantized here equals one quantized by llama.cpp's tools): per 32 values a scale d
// stored as f16 and the values as round(x / d) — Q8_0: d = max|x| / 127, q in [−127, 127];
// Q4_0: d = −m / 8 with m the value of largest magnitude, q = min(15, ⌊x / d + 8.5⌋).
#include "qwen_quant.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

/// f32 → f16 bits, rounding to nearest even (as the conversion instruction does).
static uint16_t to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    x &= 0x7FFFFFFF;
    if (x >= 0x7F800000) return (uint16_t)(sign | 0x7C00 | (x > 0x7F800000 ? 0x200 : 0));  // inf, NaN
    if (x >= 0x477FF000) return (uint16_t)(sign | 0x7C00);                                   // rounds past 65504
    if (x < 0x38800000) {                                                                     // subnormal or zero
        if (x < 0x33000000) return (uint16_t)sign;
        const uint32_t m = (x & 0x7FFFFF) | 0x800000, shift = 126 - (x >> 23);
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((x >> 13) - (112u << 10));
    const uint32_t rem = x & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

long qwen_quantize_rows(int type, const float *x, long rows, int cols, void *out) {
    if (cols % 32 != 0 || (type != QWEN_Q8_0 && type != QWEN_Q4_0)) return -1;
    uint8_t *o = out;
    const long blocks = rows * (cols / 32);
    for (long b = 0; b < blocks; b++) {
        const float *v = x + b * 32;
        if (type == QWEN_Q8_0) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(v[j]));
            const float d = amax / 127, id = d ? 1 / d : 0;
            const uint16_t dh = to_f16(d);
            memcpy(o, &dh, 2);
            for (int j = 0; j < 32; j++) o[2 + j] = (uint8_t)(int8_t)roundf(v[j] * id);
            o += 34;
        } else {
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++) {
                if (amax < fabsf(v[j])) { amax = fabsf(v[j]); max = v[j]; }
            }
            const float d = max / -8, id = d ? 1 / d : 0;
            const uint16_t dh = to_f16(d);
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
