// OpenBLAS, loaded at run time with dlopen so that the kernel set (OPENBLAS_CORETYPE)
// can be chosen from the CPU's features before the library's constructor runs.
#ifndef QWEN_BLAS_H
#define QWEN_BLAS_H

#ifdef __cplusplus
extern "C" {
#endif

/// Loads OpenBLAS once (later calls return the first result). Returns 0 on success;
/// on failure writes a message into `err`. `chosen` receives the core type this process
/// asked for ("" when the user's own OPENBLAS_CORETYPE was kept or none was needed).
int qwen_blas_load(char *err, int errlen, char *chosen, int chosenlen);

/// The kernel set OpenBLAS reports it is using (openblas_get_corename), or "unknown".
const char *qwen_blas_corename(void);
/// OpenBLAS's own configuration string, or "unknown".
const char *qwen_blas_config(void);
int qwen_blas_num_threads(void);
void qwen_blas_set_num_threads(int n);

/// Row-major C = alpha * op(A) * op(B) + beta * C, as cblas_sgemm with CblasRowMajor.
void qwen_sgemm(int transA, int transB, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta,
                float *C, int ldc);

#ifdef __cplusplus
}
#endif
#endif
