import CQwenKernels
import Dispatch
import Foundation

/// A weight matrix kept in its compact file storage (bf16, f16 or ggml quantized blocks),
/// usually next to an f32 copy. Products with a few rows — decoding, where reading the
/// weights is the whole cost — expand the compact blocks on the fly; wider products use
/// the f32 copy with sgemm, where compute is the cost. Without the copy (models too large
/// to hold in f32), every product expands the blocks, 16 rows per pass. Both give the f32
/// result (up to the order of summation).
public final class CompactMatrix: WeightMatrix, @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let storageType: Int32
    let data: UnsafeRawPointer
    let owner: AnyObject
    let dense: F32Matrix?
    /// Up to this many rows of input go through the compact kernel (one pass over the weights
    /// for up to 16 rows; measured faster than sgemm on the f32 copy up to there).
    public static var compactRowLimit = 16
    static let workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Row ranges per core: a few, so that a core slowed by other work does not hold up the step.
    static let chunksPerWorker = 8
    /// Types whose kernel beats sgemm on the f32 copy (measured, see BENCHMARKS.md): the
    /// 32-value block formats, and the K-quants with their AVX-512 kernels (their generic
    /// kernels are correct but not faster than sgemm).
    static let fastTypes: Set<Int32> = CPUFeatures.hasAVX512 ? [1, 2, 3, 6, 7, 8, 12, 13, 14, 30] : [1, 2, 3, 6, 7, 8, 30]
    /// Use the compact kernel for every type and row count up to the limit (tests).
    public var alwaysCompact = false

    /// - data: `rows` rows of `cols` values stored as `storageType` (a ggml type number),
    ///   kept alive by `owner`.
    public init(rows: Int, cols: Int, storageType: Int32, data: UnsafeRawPointer, owner: AnyObject, dense: FloatBuffer?) {
        self.rows = rows
        self.cols = cols
        self.storageType = storageType
        self.data = data
        self.owner = owner
        self.dense = dense.map { F32Matrix(rows: rows, cols: cols, data: $0) }
    }

    public func multiply(_ x: UnsafePointer<Float>, n: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if let dense, n > Self.compactRowLimit || !(alwaysCompact || Self.fastTypes.contains(storageType)) {
            dense.multiply(x, n: n, into: out, accumulate: accumulate)
            return
        }
        let w = Self.workers * Self.chunksPerWorker
        let chunk = (rows + w - 1) / w
        let (t, d, c, r) = (storageType, data, Int32(cols), rows)
        DispatchQueue.concurrentPerform(iterations: w) { k in
            let lo = k * chunk, hi = min(r, lo + chunk)
            guard lo < hi else { return }
            qwen_quant_matmul(t, d, c, Int32(lo), Int32(hi), x, Int32(n), c, out, Int32(r), accumulate ? 1 : 0)
        }
    }

    public func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        if let dense { return dense.copyRow(r, into: out) }
        qwen_dequant_row(storageType, data + r * qwen_quant_row_bytes(storageType, Int32(cols)), Int32(cols), out)
    }

    /// Whether an f32 copy is kept beside the compact storage.
    public var hasF32Copy: Bool { dense != nil }
}
