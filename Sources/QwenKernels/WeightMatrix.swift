/// A weight matrix W of shape [rows × cols] (PyTorch's [out_features, in_features]).
/// The model only multiplies by it and reads rows from it, so the storage (f32 today,
/// bf16 or quantized blocks later) can change without touching the model code.
public protocol WeightMatrix: AnyObject, Sendable {
    var rows: Int { get }
    var cols: Int { get }
    /// out[n × rows] = x[n × cols] · Wᵀ (+ out when `accumulate`).
    func multiply(_ x: UnsafePointer<Float>, n: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool)
    /// dx[n × cols] = dy[n × rows] · W (+ dx when `accumulate`): the product back through the
    /// matrix, for training (gradients flow through frozen weights without copying them to f32).
    func multiplyTransposed(_ dy: UnsafePointer<Float>, n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool)
    /// out[0..<cols] = W[r, :].
    func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>)
}

/// Plain f32 storage, multiplied with OpenBLAS sgemm.
public final class F32Matrix: WeightMatrix, @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let data: FloatBuffer

    public init(rows: Int, cols: Int, data: FloatBuffer) {
        precondition(data.count == rows * cols, "matrix data has \(data.count) values, expected \(rows)×\(cols)")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    public func multiply(_ x: UnsafePointer<Float>, n: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool) {
        BLAS.sgemm(transB: true, m: n, n: rows, k: cols, a: x, lda: cols, b: data.pointer, ldb: cols,
                   beta: accumulate ? 1 : 0, c: out, ldc: rows)
    }

    public func multiplyTransposed(_ dy: UnsafePointer<Float>, n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        BLAS.sgemm(m: n, n: cols, k: rows, a: dy, lda: rows, b: data.pointer, ldb: cols,
                   beta: accumulate ? 1 : 0, c: dx, ldc: cols)
    }

    public func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        out.update(from: data.pointer + r * cols, count: cols)
    }
}
