import CQwenKernels
import Foundation
import QwenKernels

/// What `--quantize` turns float weight matrices into at load.
public enum QuantizeType: String, Sendable, CaseIterable {
    case q8_0, q4_0, q4_k

    var ggmlType: Int32 {
        switch self {
        case .q8_0: return Int32(QWEN_Q8_0)
        case .q4_0: return Int32(QWEN_Q4_0)
        case .q4_k: return Int32(QWEN_Q4_K)
        }
    }

    /// The block type a matrix of `cols` columns gets: Q4_K needs rows of whole 256-value
    /// super-blocks; narrower or odd widths take Q8_0 instead.
    func ggmlType(cols: Int) -> Int32 { self == .q4_k && cols % 256 != 0 ? Int32(QWEN_Q8_0) : ggmlType }
}

/// A float checkpoint (bf16/f16/f32) seen through quantization: every 2-D weight matrix whose
/// width is a multiple of 32 becomes ggml blocks of `type` (Q4_K: widths that are multiples of 256; others Q8_0) (ggml's reference rules, so the same
/// as llama.cpp's quantize tool would make), which the compact and int8 kernels then read like
/// a GGUF's. Its f32 view is the dequantized blocks, so every path sees the same weights.
/// Tensors already quantized, 1-D tensors and odd widths pass through unchanged.
public final class QuantizedSource: TensorSource {
    let base: TensorSource
    public let type: QuantizeType
    private var blocks: [String: Blocks] = [:]
    private let lock = NSLock()

    /// One tensor's blocks, kept alive as the owner of the storage pointer.
    final class Blocks {
        let data: UnsafeMutableRawPointer
        let bytes: Int
        init(bytes: Int) {
            self.bytes = bytes
            data = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
        }
        deinit { data.deallocate() }
    }

    public init(_ base: TensorSource, type: QuantizeType) {
        self.base = base
        self.type = type
    }

    public var origin: String { base.origin }
    public var tensorNames: [String] { base.tensorNames }
    public func shape(of name: String) -> [Int]? { base.shape(of: name) }

    func quantizes(_ name: String) -> Bool {
        guard name.hasSuffix(".weight"), let s = base.shape(of: name), s.count == 2, s[1] % 32 == 0 else { return false }
        // Already quantized (a GGUF's f32 matrices come with type 0: float, so quantized here).
        if let c = base.compactStorage(name), ![Int32(QWEN_F32), Int32(QWEN_F16), Int32(QWEN_BF16)].contains(c.0) { return false }
        return true
    }

    /// The tensor's blocks, quantized on first use.
    func quantized(_ name: String) throws -> Blocks {
        if let b = lock.withLock({ blocks[name] }) { return b }
        let b = try encode(name)
        lock.withLock { blocks[name] = b }
        return b
    }

    /// The ggml type and byte size a tensor this view quantizes gets; nil for the others.
    public func quantizedLayout(_ name: String) throws -> (type: Int32, bytes: Int)? {
        guard quantizes(name), let s = base.shape(of: name) else { return nil }
        let t = type.ggmlType(cols: s[1])
        let (total, overflow) = Int(qwen_quant_row_bytes(t, Int32(s[1]))).multipliedReportingOverflow(by: s[0])
        guard !overflow else { throw ModelFileError(origin, "tensor \(name) is too large to quantize") }
        return (t, total)
    }

    /// The blocks of a tensor this view quantizes, made now and not kept (for writing a file
    /// a tensor at a time): the bytes and the object that owns them.
    public func quantizedBytes(_ name: String) throws -> (UnsafeRawBufferPointer, AnyObject) {
        let b = try encode(name)
        return (UnsafeRawBufferPointer(start: b.data, count: b.bytes), b)
    }

    private func encode(_ name: String) throws -> Blocks {
        guard let (t, total) = try quantizedLayout(name) else { throw ModelFileError(origin, "tensor \(name) is not quantized") }
        let s = base.shape(of: name)!
        let x = try base.floats(name)
        let b = Blocks(bytes: total)
        let written = qwen_quantize_rows(t, x.pointer, s[0], Int32(s[1]), b.data)
        precondition(written == total, "quantized size mismatch")
        return b
    }

    public func compactStorage(_ name: String) -> (Int32, UnsafeRawPointer, AnyObject)? {
        guard quantizes(name), let b = try? quantized(name) else { return base.compactStorage(name) }
        return (type.ggmlType(cols: base.shape(of: name)![1]), UnsafeRawPointer(b.data), b)
    }

    public func floats(_ name: String) throws -> FloatBuffer {
        guard quantizes(name) else { return try base.floats(name) }
        let s = base.shape(of: name)!
        let b = try quantized(name)
        let out = FloatBuffer(count: s[0] * s[1])
        let t = type.ggmlType(cols: s[1])
        let rowBytes = Int(qwen_quant_row_bytes(t, Int32(s[1])))
        for r in 0..<s[0] {
            qwen_dequant_row(t, b.data + r * rowBytes, Int32(s[1]), out.pointer + r * s[1])
        }
        return out
    }
}
