// The f16 → f32 table the block kernels read.
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
