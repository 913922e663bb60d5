import CQwenKernels
import Dispatch
import Foundation

/// A weight matrix kept in its compact file storage (bf16, f16 or ggml quantized blocks),
/// usually next to an f32 copy. Products with up to a few dozen rows — decoding batches —
/// expand the compact blocks on the fly, each block read once per 12 input rows; wider
/// products (prompts) use the f32 copy with sgemm, which reads 4× the bytes but computes
/// faster. Without the copy (models too large to hold in f32), every product expands the
/// blocks. Both give the f32 result (up to the order of summation).
///
/// In the int8 compute mode, quantized matrices are repacked for the integer kernel instead
/// (no f32 copy) and every product, of any number of rows, quantizes its input and runs that
/// kernel — one row too (single-stream generation measured 55.8 vs 37.5 tok/s with the f32
/// compact kernel). Each row's arithmetic is the same whatever rows share the call, so a
/// sequence gets bit-identical results alone and in a batch.
public final class CompactMatrix: WeightMatrix, @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let storageType: Int32
    let data: UnsafeRawPointer
    let owner: AnyObject
    let dense: F32Matrix?
    let int8: Int8Panels?
    /// Up to this many rows of input go through the compact kernel (one pass over the weights
    /// per 12 rows with AVX-512, per 6 with AVX2). Decoding the default model with AVX-512 measured
    /// faster this way than with sgemm on the f32 copy up to about 64 sequences (24: 130 vs 87
    /// tok/s; 48: 138 vs 132; 64: 135 vs 134; 96: 130 vs 150); with AVX2 see `avx2RowLimit`.
    /// QWEN_COMPACT_ROWS overrides it for measuring.
    public static var compactRowLimit = Int(ProcessInfo.processInfo.environment["QWEN_COMPACT_ROWS"] ?? "")
        ?? (CPUFeatures.hasAVX512 ? 64 : avx2RowLimit)
    /// Where the AVX2 (and portable) compact kernel stops paying: a 32-row prompt chunk of the
    /// default model with `--f32-weights no` measured 77 tok/s compact against 85 tiled, 16 rows 75
    /// against 41, 64 rows 84 against 104, 128 rows 88 against 125 (BENCHMARKS.md).
    static let avx2RowLimit = 24
    static let workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Row ranges per core: a few, so that a core slowed by other work does not hold up the step.
    static let chunksPerWorker = 8
    /// Types whose kernel beats sgemm on the f32 copy (measured, see BENCHMARKS.md): the
    /// 32-value block formats, and the K-quants with their AVX-512 or AVX2 kernels (their
    /// portable kernels are correct but not faster than sgemm).
    static let fastTypes: Set<Int32> = CPUFeatures.hasAVX2 ? [1, 2, 3, 6, 7, 8, 12, 13, 14, 30] : [1, 2, 3, 6, 7, 8, 30]
    /// Use the compact kernel for every type and row count up to the limit (tests).
    public var alwaysCompact = false
    /// Every product runs the compact kernel, whatever its row count (float matrices in the int8 mode).
    let rowExact: Bool

    /// - data: `rows` rows of `cols` values stored as `storageType` (a ggml type number),
    ///   kept alive by `owner`.
    /// - int8: repack for the int8 kernel (quantized types only; others ignore it).
    /// - rowExact: run the compact kernel at every row count (a float matrix in the int8 mode).
    public init(rows: Int, cols: Int, storageType: Int32, data: UnsafeRawPointer, owner: AnyObject, dense: FloatBuffer?, int8: Bool = false,
                rowExact: Bool = false) {
        self.rows = rows
        self.cols = cols
        self.storageType = storageType
        self.data = data
        self.owner = owner
        self.int8 = int8 && Int8Panels.supports(storageType, cols: cols)
            ? Int8Panels(type: storageType, rows: rows, cols: cols, data: data) : nil
        // In the int8 mode a matrix that cannot be repacked (float storage) runs the compact f32
        // kernel at every row count, as the int8 kernel does: a row then gets the same bits alone
        // and in a batch. Switching to sgemm for wide batches changed results in the last bits,
        // which the next product's 8-bit input rounding can turn into differences of 1e-3 in a
        // log-probability (seen with OpenBLAS's Haswell kernels).
        self.rowExact = rowExact && self.int8 == nil
        self.dense = self.int8 == nil && !rowExact ? dense.map { F32Matrix(rows: rows, cols: cols, data: $0) } : nil
    }

    /// Whether `int8: true` would repack a matrix of this type and width.
    public static func int8Packs(storageType: Int32, cols: Int) -> Bool { Int8Panels.supports(storageType, cols: cols) }
    /// Bytes the int8 panels of such a matrix take.
    public static func int8Bytes(storageType: Int32, rows: Int, cols: Int) -> Int {
        Int8Panels.bytes(type: storageType, rows: rows, cols: cols)
    }

    /// Whether a product with `n` input rows runs the compact kernel (else sgemm on the f32 copy).
    func usesKernel(n: Int) -> Bool {
        if int8 != nil || rowExact { return true }
        if dense == nil { return alwaysCompact || n <= Self.tiledRowThreshold }
        return n <= Self.compactRowLimit && (alwaysCompact || Self.fastTypes.contains(storageType))
    }

    /// Without an f32 copy, products with more input rows than this expand tiles of the
    /// blocks to f32 and multiply them with sgemm (each block expanded once per product)
    /// rather than run the compact kernel (one pass over the blocks per 12 rows). Measured on
    /// the default model: at 128 rows the compact kernel is faster (a 128-token prompt with
    /// `--f32-weights no`: 205 vs 163 tok/s), at 300 rows the tiles are (Q5_0 166 vs 155 GFLOPS,
    /// Q6_K 159 vs 111) — with AVX-512; AVX2's kernels take fewer rows a pass (`avx2RowLimit`).
    /// QWEN_TILED_ROWS overrides it for measuring.
    public static var tiledRowThreshold = Int(ProcessInfo.processInfo.environment["QWEN_TILED_ROWS"] ?? "")
        ?? (CPUFeatures.hasAVX512 ? 256 : avx2RowLimit)

    public func multiply(_ x: UnsafePointer<Float>, n: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if !usesKernel(n: n) {
            if let dense { dense.multiply(x, n: n, into: out, accumulate: accumulate) } else { tiledMultiply(x, n: n, into: out, accumulate: accumulate) }
            return
        }
        Self.run([(self, out)], x, n: n, accumulate: accumulate)
    }

    /// Products of one input with several matrices (q, k and v; gate and up), all in one
    /// parallel dispatch when they run the compact kernel: decoding then waits at one barrier
    /// instead of one per matrix.
    public static func multiply(_ parts: [(WeightMatrix, UnsafeMutablePointer<Float>)], _ x: UnsafePointer<Float>, n: Int) {
        let compact = parts.compactMap { part -> (CompactMatrix, UnsafeMutablePointer<Float>)? in
            guard let m = part.0 as? CompactMatrix, m.usesKernel(n: n) else { return nil }
            return (m, part.1)
        }
        guard compact.count == parts.count else {
            for (m, out) in parts { m.multiply(x, n: n, into: out, accumulate: false) }
            return
        }
        run(compact, x, n: n, accumulate: false)
    }

    /// Every part in one parallel dispatch: the int8 kernel on quantized input when all parts
    /// were repacked, the compact f32 kernel when none was, each part alone otherwise.
    private static func run(_ parts: [(CompactMatrix, UnsafeMutablePointer<Float>)], _ x: UnsafePointer<Float>, n: Int, accumulate: Bool) {
        let int8 = parts.compactMap { $0.0.int8 }
        guard int8.isEmpty else {
            guard int8.count == parts.count else {  // mixed modes: each part on its own
                for (m, out) in parts { run([(m, out)], x, n: n, accumulate: accumulate) }
                return
            }
            runInt8(parts.map { ($0.0.int8!, $0.1) }, QuantizedRows(x, n: n, cols: parts[0].0.cols), accumulate: accumulate)
            return
        }
        runF32(parts, x, n: n, accumulate: accumulate)
    }

    private static func runInt8(_ parts: [(Int8Panels, UnsafeMutablePointer<Float>)], _ x: QuantizedRows, accumulate: Bool) {
        var made: [Int32: QuantizedRows.Terms] = [:]
        let terms = parts.map { part in
            let t = made[part.0.type] ?? QuantizedRows.Terms(type: part.0.type, x)
            made[part.0.type] = t
            return t
        }
        inParallel(parts.map { $0.0.panels }) { i, lo, hi in
            let (m, out) = parts[i]
            m.multiply(x, terms[i], panels: lo, hi, into: out, ldo: m.rows, accumulate: accumulate)
        }
    }

    private static func runF32(_ parts: [(CompactMatrix, UnsafeMutablePointer<Float>)], _ x: UnsafePointer<Float>, n: Int, accumulate: Bool) {
        inParallel(parts.map { $0.0.rows }) { i, lo, hi in
            let (m, out) = parts[i]
            qwen_quant_matmul(m.storageType, m.data, Int32(m.cols), Int32(lo), Int32(hi), x, Int32(n), Int32(m.cols),
                              out, Int32(m.rows), accumulate ? 1 : 0)
        }
    }

    /// Ranges [lo, hi) of every part's `sizes[i]` units (rows or panels), about
    /// `workers × chunksPerWorker` in all, run in parallel as body(part, lo, hi).
    private static func inParallel(_ sizes: [Int], _ body: (Int, Int, Int) -> Void) {
        let total = sizes.reduce(0, +)
        let chunk = max(1, (total + workers * chunksPerWorker - 1) / (workers * chunksPerWorker))
        var tasks: [(part: Int, lo: Int, hi: Int)] = []
        for (i, size) in sizes.enumerated() {
            for lo in stride(from: 0, to: size, by: chunk) { tasks.append((i, lo, min(size, lo + chunk))) }
        }
        tasks.withUnsafeBufferPointer { tasks in
            DispatchQueue.concurrentPerform(iterations: tasks.count) { k in body(tasks[k].part, tasks[k].lo, tasks[k].hi) }
        }
    }

    /// Rows of W expanded to f32 per tile of the transposed product (bytes: tile × cols × 4).
    public static var transposedTileRows = 256

    /// Expands rows [r0, r0 + m) of the blocks into `buf` ([m × cols] f32), on every core.
    private func expand(rows r0: Int, _ m: Int, into buf: UnsafeMutablePointer<Float>) {
        let rowBytes = Int(qwen_quant_row_bytes(storageType, Int32(cols)))
        let per = (m + Self.workers - 1) / Self.workers
        DispatchQueue.concurrentPerform(iterations: Self.workers) { w in
            for r in (w * per)..<min(m, (w + 1) * per) {
                qwen_dequant_row(storageType, data + (r0 + r) * rowBytes, Int32(cols), buf + r * cols)
            }
        }
    }

    /// out = x · Wᵀ by tiles of W expanded to f32 and sgemm (see tiledRowThreshold).
    func tiledMultiply(_ x: UnsafePointer<Float>, n: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let tile = min(rows, Self.transposedTileRows)
        let buf = TileBuffer.shared.get(tile * cols)
        for r0 in stride(from: 0, to: rows, by: tile) {
            let m = min(tile, rows - r0)
            expand(rows: r0, m, into: buf)
            BLAS.sgemm(transB: true, m: n, n: m, k: cols, a: x, lda: cols, b: buf, ldb: cols,
                       beta: accumulate ? 1 : 0, c: out + r0, ldc: rows)
        }
    }

    /// dx = dy · W from the stored blocks: tiles of W's rows are expanded to f32 (in parallel)
    /// and each multiplied with sgemm, so no f32 copy of the matrix is needed and each stored
    /// block is read once per product, however many rows dy has.
    public func multiplyTransposed(_ dy: UnsafePointer<Float>, n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if let dense { return dense.multiplyTransposed(dy, n: n, into: dx, accumulate: accumulate) }
        let tile = min(rows, Self.transposedTileRows)
        let buf = TileBuffer.shared.get(tile * cols)
        var first = true
        for r0 in stride(from: 0, to: rows, by: tile) {
            let m = min(tile, rows - r0)
            expand(rows: r0, m, into: buf)
            BLAS.sgemm(m: n, n: cols, k: m, a: dy + r0, lda: rows, b: buf, ldb: cols,
                       beta: (accumulate || !first) ? 1 : 0, c: dx, ldc: cols)
            first = false
        }
    }

    public func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        if let dense { return dense.copyRow(r, into: out) }
        qwen_dequant_row(storageType, data + r * qwen_quant_row_bytes(storageType, Int32(cols)), Int32(cols), out)
    }

    /// Bytes of the stored blocks.
    public var storedBytes: Int { rows * Int(qwen_quant_row_bytes(storageType, Int32(cols))) }

    /// Whether an f32 copy is kept beside the compact storage.
    public var hasF32Copy: Bool { dense != nil }
    /// Whether products run in the int8 mode (the matrix was repacked).
    public var computesInt8: Bool { int8 != nil }

    /// Bytes a product with few rows reads: the int8 panels, or the stored blocks.
    public var bytesReadPerProduct: Int {
        computesInt8 ? Self.int8Bytes(storageType: storageType, rows: rows, cols: cols)
            : rows * Int(qwen_quant_row_bytes(storageType, Int32(cols)))
    }
}

/// One growing scratch buffer for transposed products (training runs one product at a time).
final class TileBuffer: @unchecked Sendable {
    static let shared = TileBuffer()
    private let lock = NSLock()
    private var buffer = FloatBuffer(count: 0)

    func get(_ n: Int) -> UnsafeMutablePointer<Float> {
        lock.lock()
        defer { lock.unlock() }
        if buffer.count < n { buffer = FloatBuffer(count: n) }
        return buffer.pointer
    }
}
