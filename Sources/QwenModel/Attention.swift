import QwenKernels

/// Causal scaled-dot-product attention of `rows` new queries against a sequence's cached
/// keys and values (positions 0..<start+rows), with grouped-query heads.
enum Attention {
    static func causal(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                       out: UnsafeMutablePointer<Float>, rows n: Int, start p0: Int,
                       heads: Int, kvHeads: Int, headDim hd: Int, scores: UnsafeMutablePointer<Float>) {
        let qw = heads * hd, kvw = kvHeads * hd, group = heads / kvHeads
        let total = p0 + n
        let scale = 1 / Float(hd).squareRoot()
        if n == 1 {
            // Decode: the `group` query heads that share a KV head are contiguous, so one
            // product per KV head covers them all.
            for g in 0..<kvHeads {
                let qg = q + g * group * hd
                BLAS.sgemm(transB: true, m: group, n: total, k: hd, alpha: scale, a: qg, lda: hd,
                           b: keys + g * hd, ldb: kvw, c: scores, ldc: total)
                for r in 0..<group { Ops.softmax(scores + r * total, count: total) }
                BLAS.sgemm(m: group, n: hd, k: total, a: scores, lda: total, b: values + g * hd, ldb: kvw,
                           c: out + g * group * hd, ldc: hd)
            }
            return
        }
        for hIdx in 0..<heads {
            let g = hIdx / group
            BLAS.sgemm(transB: true, m: n, n: total, k: hd, alpha: scale, a: q + hIdx * hd, lda: qw,
                       b: keys + g * hd, ldb: kvw, c: scores, ldc: total)
            for i in 0..<n {
                let row = scores + i * total
                let visible = p0 + i + 1
                Ops.softmax(row, count: visible)
                for j in visible..<total { row[j] = 0 }
            }
            BLAS.sgemm(m: n, n: hd, k: total, a: scores, lda: total, b: values + g * hd, ldb: kvw,
                       c: out + hIdx * hd, ldc: qw)
        }
    }
}
