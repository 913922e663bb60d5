import CQwenKernels
import Foundation

/// The small kernels of a transformer block, each over explicit row-major buffers.
/// Plain loops that the optimiser vectorises (siluMul calls a hand-vectorised C kernel for
/// its exp); BLAS and the compact kernels do the matrix products.
public enum Ops {
    /// out[r] = x[r] / rms(x[r]) * weight, for `rows` rows of width `dim`. `out` may equal `x`.
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                               out: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        for r in 0..<rows {
            let xr = x + r * dim, orow = out + r * dim
            var ss: Float = 0
            for i in 0..<dim { ss += xr[i] * xr[i] }
            let scale = 1 / (ss / Float(dim) + eps).squareRoot()
            for i in 0..<dim { orow[i] = weight[i] * (xr[i] * scale) }
        }
    }

    /// In place: y += x.
    public static func add(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    /// Adds `bias` (width `dim`) to each of `rows` rows.
    public static func addBias(_ y: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>, rows: Int, dim: Int) {
        for r in 0..<rows { add(y + r * dim, bias, count: dim) }
    }

    /// gate[i] = silu(gate[i]) * up[i], in place in `gate` (a vectorised exp in C: libm's is scalar).
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        qwen_silu_mul(gate, up, count)
    }

    /// Softmax over `count` values in place; returns nothing. Skips -inf entries correctly.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        var m = -Float.infinity
        for i in 0..<count where x[i] > m { m = x[i] }
        var sum: Float = 0
        for i in 0..<count {
            let e = expf(x[i] - m)
            x[i] = e
            sum += e
        }
        let inv = 1 / sum
        for i in 0..<count { x[i] *= inv }
    }

    /// Rotary embedding in the "rotate half" layout that Qwen uses (pairs i and i+d/2),
    /// applied to `heads` heads of width `headDim` in one row at position `pos`.
    /// `invFreq` has headDim/2 entries.
    public static func rope(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, pos: Int,
                            invFreq: UnsafePointer<Float>) {
        let half = headDim / 2
        for i in 0..<half {
            let angle = Float(pos) * invFreq[i]
            let c = cosf(angle), s = sinf(angle)
            for h in 0..<heads {
                let p = x + h * headDim
                let a = p[i], b = p[i + half]
                p[i] = a * c - b * s
                p[i + half] = b * c + a * s
            }
        }
    }
}
