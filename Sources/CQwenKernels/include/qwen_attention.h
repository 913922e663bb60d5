// Attention of one query row against a sequence's keys and values in a paged cache.
#ifndef QWEN_ATTENTION_H
#define QWEN_ATTENTION_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// q: heads*hd floats (one token). kbase/vbase: a layer's cache; position t of the
/// sequence lives in block blocks[t / block_size], row t % block_size, each row kv_heads*hd
/// floats. Attends to positions 0..<ctx. out: heads*hd floats. scratch: at least
/// (heads/kv_heads)*ctx floats.
void qwen_attend_paged(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                       const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch);

/// The same for the query heads of kv heads g_begin..<g_end only (their part of out), so one
/// row's heads can be spread over threads.
void qwen_attend_paged_groups(const float *q, int heads, int kv_heads, int hd, const float *kbase, const float *vbase,
                              const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                              int g_begin, int g_end);

/// The same over a cache stored as f32 (kv_f16 = 0) or IEEE half floats (kv_f16 = 1;
/// kbase/vbase then point at uint16_t elements).
void qwen_attend_paged_kv(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                          const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                          int g_begin, int g_end, int kv_f16);

/// Rounds n floats to IEEE half floats (nearest, ties to even), as a half-float cache stores them.
void qwen_f32_to_f16(const float *src, uint16_t *dst, int n);

#ifdef __cplusplus
}
#endif
#endif
