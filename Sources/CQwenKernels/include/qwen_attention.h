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

/// How a cache stores its elements: f32; IEEE half floats; or Q8_0 — each head of each row as
/// ceil(hd/32) blocks of 34 bytes (an f16 scale d, then 32 int8 q; a value is d·q; the last
/// block's values past hd are padding), so a row is kv_heads·ceil(hd/32)·34 bytes.
enum { QWEN_KV_F32 = 0, QWEN_KV_F16 = 1, QWEN_KV_Q8_0 = 2 };

/// The same over a cache stored as kv_type (one of the above).
void qwen_attend_paged_kv(const float *q, int heads, int kv_heads, int hd, const void *kbase, const void *vbase,
                          const int32_t *blocks, int block_size, int ctx, float scale, float *out, float *scratch,
                          int g_begin, int g_end, int kv_type);

/// The same for n query rows of one sequence at consecutive positions — row i (q + i·ld, its
/// output at out + i·ld) attends to positions 0..<ctx0 + i — reading each key and value from
/// the cache once for all of them. Each row's result is bit-identical to qwen_attend_paged_kv
/// on it alone. scratch: at least n·(heads/kv_heads)·(ctx0 + n − 1) + 80·hd floats.
void qwen_attend_paged_rows(const float *q, int ld, int n, int ctx0, int heads, int kv_heads, int hd, const void *kbase,
                            const void *vbase, const int32_t *blocks, int block_size, float scale, float *out, float *scratch,
                            int g_begin, int g_end, int kv_type);

/// Rounds n floats to IEEE half floats (nearest, ties to even), as a half-float cache stores them.
void qwen_f32_to_f16(const float *src, uint16_t *dst, int n);

#ifdef __cplusplus
}
#endif
#endif
