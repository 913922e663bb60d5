// Helpers shared by the kernels that read ggml's block formats (internal to CQwenKernels).
#ifndef QWEN_GGML_BLOCKS_H
#define QWEN_GGML_BLOCKS_H

#include <stdint.h>

/// f16 bit patterns to f32, filled at load time (f16_table.c).
extern float qwen_f16_table[65536];

/// f32 → f16 bits, rounding to nearest even (as the conversion instruction does); f16_table.c.
uint16_t qwen_f16_from_f32(float f);

static inline float f16(const uint8_t *p) { return qwen_f16_table[(uint16_t)(p[0] | (p[1] << 8))]; }

/// Scale and min of sub-block j of a Q4_K/Q5_K block (6 bits each, packed in 12 bytes).
static inline void scale_min_k4(int j, const uint8_t *q, float *sc, float *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

#endif
