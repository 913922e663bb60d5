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

    /// Backward of `rmsNorm` (weight frozen): dx[r] (+)= r·(w⊙dy) − r³/dim · x · Σ(w⊙dy⊙x),
    /// with r = 1/rms(x[r]). `dx` may equal `dy`.
    public static func rmsNormBackward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                       dx: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float, accumulate: Bool) {
        for r in 0..<rows {
            let xr = x + r * dim, dyr = dy + r * dim, dxr = dx + r * dim
            var ss: Float = 0, dot: Float = 0
            for i in 0..<dim {
                ss += xr[i] * xr[i]
                dot += weight[i] * dyr[i] * xr[i]
            }
            let scale = 1 / (ss / Float(dim) + eps).squareRoot()
            let k = scale * scale * scale * dot / Float(dim)
            if accumulate {
                for i in 0..<dim { dxr[i] += scale * weight[i] * dyr[i] - k * xr[i] }
            } else {
                for i in 0..<dim { dxr[i] = scale * weight[i] * dyr[i] - k * xr[i] }
            }
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

    /// Backward of `siluMul`: given d(silu(gate)·up), dGate = d·up·silu'(gate), dUp = d·silu(gate),
    /// with silu'(g) = σ(g)(1 + g(1 − σ(g))). `dGate` may equal `d`.
    public static func siluMulBackward(_ d: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                       dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i], sig = 1 / (1 + expf(-g)), di = d[i]
            dUp[i] = di * g * sig
            dGate[i] = di * up[i] * sig * (1 + g * (1 - sig))
        }
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
        rotate(x, heads: heads, headDim: headDim, pos: pos, invFreq: invFreq, sign: 1)
    }

    /// Backward of `rope`: the rotation's transpose, which is the rotation by −pos.
    public static func ropeBackward(_ dx: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, pos: Int,
                                    invFreq: UnsafePointer<Float>) {
        rotate(dx, heads: heads, headDim: headDim, pos: pos, invFreq: invFreq, sign: -1)
    }

    /// Rotates pairs (i, i + d/2) by sign · pos · invFreq[i]; the angle is formed as in the
    /// forward either way, so backward and forward use the same cos and sin.
    private static func rotate(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, pos: Int,
                               invFreq: UnsafePointer<Float>, sign: Float) {
        let half = headDim / 2
        for i in 0..<half {
            let angle = Float(pos) * invFreq[i]
            let c = cosf(angle), s = sign * sinf(angle)
            for h in 0..<heads {
                let p = x + h * headDim
                let a = p[i], b = p[i + half]
                p[i] = a * c - b * s
                p[i + half] = b * c + a * s
            }
        }
    }
}
