import CQwenKernels
import Foundation
import QwenKernels

/// The linear projections of a decoder block that an adapter can target.
public enum Projection: Int, CaseIterable, Sendable {
    case q, k, v, o, gate, up, down

    /// The module's path inside a block, as Hugging Face names it (`self_attn.q_proj`).
    public var module: String {
        switch self {
        case .q: return "self_attn.q_proj"
        case .k: return "self_attn.k_proj"
        case .v: return "self_attn.v_proj"
        case .o: return "self_attn.o_proj"
        case .gate: return "mlp.gate_proj"
        case .up: return "mlp.up_proj"
        case .down: return "mlp.down_proj"
        }
    }

    /// The short name PEFT's `target_modules` use (`q_proj`).
    public var shortName: String { String(module.split(separator: ".").last!) }

    public init?(module: String) {
        guard let p = Projection.allCases.first(where: { $0.module == module }) else { return nil }
        self = p
    }

    /// [out, in] of this projection in a model of `config`.
    public func shape(_ c: QwenConfig) -> (out: Int, in: Int) {
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim
        switch self {
        case .q: return (qw, h)
        case .k, .v: return (kvw, h)
        case .o: return (h, qw)
        case .gate, .up: return (c.intermediateSize, h)
        case .down: return (h, c.intermediateSize)
        }
    }
}

/// One low-rank update ΔW = scale · B · A of a [out × in] projection.
public struct LoRAUpdate: Sendable {
    /// [rank × in]
    public let a: FloatBuffer
    /// Bᵀ [rank × out]: rows of B's columns, as both the row kernel and sgemm read it.
    public let bt: FloatBuffer
    public let rank: Int
    public let scale: Float

    /// - b: B [out × rank], as the adapter files store it.
    public init(a: FloatBuffer, b: FloatBuffer, rank: Int, scale: Float) {
        self.a = a
        self.rank = rank
        self.scale = scale
        let out = b.count / max(rank, 1)
        let bt = FloatBuffer(count: b.count)
        for o in 0..<out {
            for j in 0..<rank { bt[j * out + o] = b[o * rank + j] }
        }
        self.bt = bt
    }

    /// Up to this many rows go through the plain kernel; more (prompts) through sgemm.
    static let rowKernelLimit = 64

    /// out[n × outDim] += scale · (x[n × inDim] · Aᵀ) · Bᵀ, using tmp [n × rank].
    func apply(_ x: UnsafePointer<Float>, n: Int, inDim: Int, out: UnsafeMutablePointer<Float>, outDim: Int,
               tmp: UnsafeMutablePointer<Float>) {
        if n <= Self.rowKernelLimit {
            qwen_lora_rows(x, Int32(n), Int32(inDim), a.pointer, Int32(rank), bt.pointer, Int32(outDim), scale, out, tmp)
            return
        }
        BLAS.sgemm(transB: true, m: n, n: rank, k: inDim, a: x, lda: inDim, b: a.pointer, ldb: inDim, c: tmp, ldc: rank)
        BLAS.sgemm(m: n, n: outDim, k: rank, alpha: scale, a: tmp, lda: rank, b: bt.pointer, ldb: outDim,
                   beta: 1, c: out, ldc: outDim)
    }
}

/// A LoRA adapter for one base model: for each layer, an optional update per projection.
/// Immutable once loaded, so running sequences keep using it after it is unloaded or
/// replaced by name.
public final class LoRAAdapter: @unchecked Sendable {
    /// updates[layer][projection.rawValue]
    public let updates: [[LoRAUpdate?]]
    /// Where it was loaded from and in which format, for listings and errors.
    public let path: String
    public let format: String
    /// Unique per loaded adapter (reloading a name gives a new one): salts the prefix cache.
    public let id: UInt64
    public let maxRank: Int

    private static let counter = Counter()

    public init(updates: [[LoRAUpdate?]], path: String, format: String) {
        self.updates = updates
        self.path = path
        self.format = format
        id = Self.counter.next()
        maxRank = updates.joined().compactMap { $0?.rank }.max() ?? 0
    }

    public func update(layer: Int, _ p: Projection) -> LoRAUpdate? { updates[layer][p.rawValue] }

    /// Which projections it touches, as module names (for listings).
    public var targetModules: [String] {
        Projection.allCases.filter { p in updates.contains { $0[p.rawValue] != nil } }.map(\.shortName)
    }

    /// The number of trainable values it holds.
    public var parameterCount: Int { updates.joined().compactMap { $0 }.reduce(0) { $0 + $1.a.count + $1.bt.count } }

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value: UInt64 = 0x10_0000
        func next() -> UInt64 {
            lock.lock()
            defer { lock.unlock() }
            value += 1
            return value
        }
    }
}
