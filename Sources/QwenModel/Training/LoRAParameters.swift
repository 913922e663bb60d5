import Foundation
import QwenKernels

/// One trainable low-rank update ΔW = scale · B · A of a projection, with its gradients.
/// B is held transposed (Bᵀ: [rank × out]) as the serving kernels read it.
public final class LoRATensor: @unchecked Sendable {
    public let layer: Int
    public let projection: Projection
    public let rank, inDim, outDim: Int
    public let scale: Float
    /// A [rank × in], Bᵀ [rank × out], and their gradients.
    public let a, bt, gradA, gradBt: FloatBuffer

    init(layer: Int, projection: Projection, rank: Int, inDim: Int, outDim: Int, scale: Float, a: FloatBuffer, bt: FloatBuffer) {
        self.layer = layer
        self.projection = projection
        self.rank = rank
        self.inDim = inDim
        self.outDim = outDim
        self.scale = scale
        self.a = a
        self.bt = bt
        gradA = FloatBuffer(count: a.count)
        gradBt = FloatBuffer(count: bt.count)
    }

    /// The parameters and their gradients, in a fixed order (A then Bᵀ).
    public var parameters: [(value: FloatBuffer, grad: FloatBuffer)] { [(a, gradA), (bt, gradBt)] }
}

/// The LoRA parameters being trained: which layers and projections, rank, scale, dropout.
public final class LoRAParameters: @unchecked Sendable {
    public let tensors: [LoRATensor]
    public let rank: Int
    public let scale: Float
    public let dropout: Float
    /// The lowest layer that holds an update: nothing below it is back-propagated.
    public let lowestLayer: Int
    private let index: [[Int?]]

    public struct ConfigError: Error, CustomStringConvertible {
        public let description: String
    }

    init(tensors: [LoRATensor], layers: Int, rank: Int, scale: Float, dropout: Float) {
        self.tensors = tensors
        self.rank = rank
        self.scale = scale
        self.dropout = dropout
        var idx = [[Int?]](repeating: [Int?](repeating: nil, count: Projection.allCases.count), count: layers)
        for (i, t) in tensors.enumerated() { idx[t.layer][t.projection.rawValue] = i }
        index = idx
        lowestLayer = tensors.map(\.layer).min() ?? layers
    }

    /// Fresh parameters as mlx-lm makes them: A uniform in ±1/√in, B zero, on the last
    /// `numLayers` layers (-1: all) and the given projections.
    public convenience init(config c: QwenConfig, numLayers: Int, projections: [Projection], rank: Int, scale: Float,
                            dropout: Float, seed: UInt64) throws {
        guard rank >= 1 else { throw ConfigError(description: "lora_parameters.rank must be at least 1, got \(rank)") }
        guard rank <= 4096 else { throw ConfigError(description: "lora_parameters.rank \(rank) is too large") }
        guard scale.isFinite else { throw ConfigError(description: "lora_parameters.scale must be a finite number") }
        guard dropout >= 0, dropout < 1 else { throw ConfigError(description: "lora_parameters.dropout must be in [0, 1), got \(dropout)") }
        guard !projections.isEmpty else { throw ConfigError(description: "lora_parameters.keys names no projection") }
        let n = numLayers < 0 ? c.layers : numLayers
        guard n >= 1, n <= c.layers else {
            throw ConfigError(description: "num_layers must be -1 or between 1 and the model's \(c.layers) layers, got \(numLayers)")
        }
        var rng = SplitMix(seed: seed)
        var tensors: [LoRATensor] = []
        for l in (c.layers - n)..<c.layers {
            for p in Projection.allCases where projections.contains(p) {
                let (out, inDim) = p.shape(c)
                let a = FloatBuffer(count: rank * inDim)
                let bound = 1 / Float(inDim).squareRoot()
                for i in 0..<a.count { a[i] = (rng.nextUnit() * 2 - 1) * bound }
                tensors.append(LoRATensor(layer: l, projection: p, rank: rank, inDim: inDim, outDim: out, scale: scale,
                                          a: a, bt: FloatBuffer(count: rank * out)))
            }
        }
        self.init(tensors: tensors, layers: c.layers, rank: rank, scale: scale, dropout: dropout)
    }

    /// Parameters starting from a loaded adapter (resuming, or a given initial adapter).
    public convenience init(adapter: LoRAAdapter, config c: QwenConfig, dropout: Float = 0) throws {
        var tensors: [LoRATensor] = []
        for (l, row) in adapter.updates.enumerated() {
            for p in Projection.allCases {
                guard let u = row[p.rawValue] else { continue }
                let (out, inDim) = p.shape(c)
                let a = FloatBuffer(count: u.a.count), bt = FloatBuffer(count: u.bt.count)
                a.pointer.update(from: u.a.pointer, count: a.count)
                bt.pointer.update(from: u.bt.pointer, count: bt.count)
                tensors.append(LoRATensor(layer: l, projection: p, rank: u.rank, inDim: inDim, outDim: out, scale: u.scale, a: a, bt: bt))
            }
        }
        guard !tensors.isEmpty else { throw ConfigError(description: "the adapter \(adapter.path) holds no LoRA update") }
        self.init(tensors: tensors, layers: c.layers, rank: tensors.map(\.rank).max() ?? 0,
                  scale: tensors[0].scale, dropout: dropout)
    }

    public func tensor(layer: Int, _ p: Projection) -> LoRATensor? {
        guard layer < index.count, let i = index[layer][p.rawValue] else { return nil }
        return tensors[i]
    }

    public var parameterCount: Int { tensors.reduce(0) { $0 + $1.a.count + $1.bt.count } }

    public func zeroGradients() {
        for t in tensors {
            t.gradA.zero()
            t.gradBt.zero()
        }
    }

    /// A copy of the current values as a servable adapter.
    public func snapshot(layers: Int, path: String, format: String) -> LoRAAdapter {
        var updates = [[LoRAUpdate?]](repeating: [LoRAUpdate?](repeating: nil, count: Projection.allCases.count), count: layers)
        for t in tensors {
            updates[t.layer][t.projection.rawValue] = LoRAUpdate(a: FloatBuffer(t.a.array), b: FloatBuffer(t.b), rank: t.rank, scale: t.scale)
        }
        return LoRAAdapter(updates: updates, path: path, format: format)
    }
}

extension LoRATensor {
    /// B [out × rank], as adapter files store it.
    public var b: [Float] {
        var out = [Float](repeating: 0, count: rank * outDim)
        for j in 0..<rank {
            for o in 0..<outDim { out[o * rank + j] = bt[j * outDim + o] }
        }
        return out
    }
}

/// A small fast generator (splitmix64) for seeded, reproducible initialisation and dropout.
public struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Self.mix(state)
    }
    @inline(__always) public static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Float { Float(next() >> 40) / Float(1 << 24) }
}
