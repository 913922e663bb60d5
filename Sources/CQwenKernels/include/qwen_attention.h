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

#ifdef __cplusplus
}
#endif
#endif
