import CQwenKernels
import Dispatch

/// A quantized matrix repacked for the int8 kernel: panels of 16 rows, each value in 8, 5 or 4
/// bits as the type has it, a scale per 16 or 32 values and row, and a min term for the types
/// that have one.
final class Int8Panels: @unchecked Sendable {
    let type: Int32
    let rows: Int
    let cols: Int
    let panels: Int
    let q: UnsafeMutableRawPointer
    let scale: UnsafeMutablePointer<Float>
    let min: UnsafeMutablePointer<Float>?

    static func supports(_ type: Int32, cols: Int) -> Bool {
        qwen_i8_supported(type) != 0 && cols % 32 == 0
    }

    /// Repacks `data` (rows × cols as `type`), panels spread over the cores.
    init(type: Int32, rows: Int, cols: Int, data: UnsafeRawPointer) {
        self.type = type
        self.rows = rows
        self.cols = cols
        panels = (rows + 15) / 16
        let group = Int(qwen_i8_group(type))
        q = UnsafeMutableRawPointer.allocate(byteCount: panels * (cols / group) * qwen_i8_group_bytes(type), alignment: 64)
        scale = UnsafeMutableRawPointer.allocate(byteCount: panels * (cols / group) * 16 * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: panels * (cols / group) * 16)
        min = qwen_i8_has_min(type) != 0
            ? UnsafeMutableRawPointer.allocate(byteCount: panels * (cols / 32) * 16 * 4, alignment: 64)
                .bindMemory(to: Float.self, capacity: panels * (cols / 32) * 16)
            : nil
        let step = 64
        let (q, scale, min, panels) = (q, scale, min, panels)
        DispatchQueue.concurrentPerform(iterations: (panels + step - 1) / step) { k in
            let p0 = k * step, p1 = Swift.min(panels, p0 + step)
            qwen_i8_pack(type, data, Int32(rows), Int32(cols), Int32(p0), Int32(p1), q.assumingMemoryBound(to: UInt8.self),
                         scale, min)
        }
    }

    deinit {
        q.deallocate()
        UnsafeMutableRawPointer(scale).deallocate()
        if let min { UnsafeMutableRawPointer(min).deallocate() }
    }

    /// Bytes held: the values, plus scales and mins.
    static func bytes(type: Int32, rows: Int, cols: Int) -> Int {
        let panels = (rows + 15) / 16
        let groups = panels * (cols / Int(qwen_i8_group(type)))
        return groups * (qwen_i8_group_bytes(type) + 64) + (qwen_i8_has_min(type) != 0 ? panels * (cols / 32) * 64 : 0)
    }

    /// out[i·ldo + r] (+)= row r · input row i, for panels [p0, p1); `terms` made for this type.
    func multiply(_ x: QuantizedRows, _ terms: QuantizedRows.Terms, panels p0: Int, _ p1: Int, into out: UnsafeMutablePointer<Float>,
                  ldo: Int, accumulate: Bool) {
        qwen_i8_matmul(type, q.assumingMemoryBound(to: UInt8.self), scale, min, Int32(rows), Int32(cols), Int32(p0), Int32(p1),
                       x.q, terms.corr, terms.dx, terms.dmin, Int32(x.n), out, Int32(ldo), accumulate ? 1 : 0, -1)
    }
}

/// Input rows quantized to 8 bits per 32 values (scale = max |x| / 127), with the sums of
/// every 16 quantized values that the kernel's offset terms need.
final class QuantizedRows {
    let n: Int
    let cols: Int
    let q: UnsafeMutablePointer<Int8>
    let d: UnsafeMutablePointer<Float>
    let sums: UnsafeMutablePointer<Int32>

    init(_ x: UnsafePointer<Float>, n: Int, cols: Int) {
        self.n = n
        self.cols = cols
        q = .allocate(capacity: n * cols)
        d = .allocate(capacity: n * cols / 32)
        sums = .allocate(capacity: n * cols / 16)
        // Prompts: rows spread over the cores (a serial pass measured ~4% of a step's time).
        let parts = n >= 16 ? min(n, 2 * CompactMatrix.workers) : 1
        let (q, d, sums) = (q, d, sums)
        DispatchQueue.concurrentPerform(iterations: parts) { k in
            let lo = n * k / parts, hi = n * (k + 1) / parts
            qwen_q8_quantize(x + lo * cols, Int32(hi - lo), Int32(cols), Int32(cols), q + lo * cols, d + lo * cols / 32, sums + lo * cols / 16)
        }
    }

    deinit {
        q.deallocate()
        d.deallocate()
        sums.deallocate()
    }

    /// The per-row offset corrections and scales a weight type's kernel reads (qwen_i8_terms).
    /// `runInt8` makes them once per input and weight type (q, k and v may share a type).
    final class Terms {
        let corr: UnsafeMutablePointer<Int32>
        let dx: UnsafeMutablePointer<Float>
        let dmin: UnsafeMutablePointer<Float>

        init(type: Int32, _ x: QuantizedRows) {
            let groups = x.n * x.cols / Int(qwen_i8_group(type))
            corr = .allocate(capacity: groups)
            dx = .allocate(capacity: groups)
            dmin = .allocate(capacity: x.n * x.cols / 32)
            qwen_i8_terms(type, x.d, x.sums, Int32(x.n), Int32(x.cols), corr, dx, dmin)
        }

        deinit {
            corr.deallocate()
            dx.deallocate()
            dmin.deallocate()
        }
    }
}
