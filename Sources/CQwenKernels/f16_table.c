// The f16 → f32 table the block kernels read, and the one f32 → f16 rounding they write with.
#include "ggml_blocks.h"
#include <string.h>

float qwen_f16_table[65536];

__attribute__((constructor)) static void init_f16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
        if (exp == 0) {
            if (mant == 0) {
                bits = sign;
            } else {  // subnormal: normalise
                int e = -1;
                do { mant <<= 1; e++; } while ((mant & 0x400) == 0);
                mant &= 0x3ff;
                bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
            }
        } else if (exp == 31) {
            bits = sign | 0x7f800000u | (mant << 13);
        } else {
            bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
        }
        memcpy(&qwen_f16_table[h], &bits, 4);
    }
}

uint16_t qwen_f16_from_f32(float f) {
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
