import Foundation
import QwenFormats
import QwenKernels

/// A Qwen2/Qwen3 decoder. `forward` runs any number of sequences at once: their new
/// tokens are stacked into one [T × hidden] activation so every projection is a single
/// matrix product, and only attention looks at each sequence (and its KV cache) alone.
/// Not thread-safe: one forward at a time (its scratch buffers are reused).
public final class QwenModel {
    public let config: QwenConfig
    public let weights: QwenWeights
    let invFreq: FloatBuffer
    var scratch = Scratch()

    public struct Item {
        public let cache: KVCache
        public let tokens: [Int32]
        /// Which of this item's rows need logits: all of them, only the last, or none.
        public let logits: LogitsRows
        /// The LoRA adapter for this item's rows, or nil for the base model.
        public let adapter: LoRAAdapter?
        public init(cache: KVCache, tokens: [Int32], logits: LogitsRows = .last, adapter: LoRAAdapter? = nil) {
            self.cache = cache
            self.tokens = tokens
            self.logits = logits
            self.adapter = adapter
        }
    }

    public enum LogitsRows { case none, last, all }

    public struct ForwardError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(config: QwenConfig, weights: QwenWeights) {
        self.config = config
        self.weights = weights
        let half = config.headDim / 2
        invFreq = FloatBuffer(count: half)
        for i in 0..<half {
            // As transformers computes it: in f32, base ** (2i / dim), then its reciprocal.
            let e = Float(2 * i) / Float(config.headDim)
            invFreq[i] = 1 / powf(config.ropeTheta, e) / config.ropeLinearFactor
        }
    }

    public convenience init(config: QwenConfig, source: TensorSource, f32Copies: Bool = true, compute: ComputeMode = .f32) throws {
        self.init(config: config, weights: try QwenWeights(config: config, source: source, f32Copies: f32Copies, compute: compute))
    }

    /// Runs the new tokens of every item, appends their keys and values to each item's
    /// cache, and returns the requested logits: one [rows × vocab] array per item. Reserves the
    /// caches' room and records the new positions itself (single streams, training, tests); the
    /// engine reserves through its scheduler and calls `compute`.
    public func forward(_ items: [Item]) throws -> [[Float]] {
        for it in items where !it.cache.reserve(it.tokens.count) {
            throw ForwardError(description: "the KV cache is full")
        }
        let out = try compute(items)
        for it in items { it.cache.advance(it.tokens) }
        return out
    }

    /// The forward pass proper: reads each item's block table (which must already hold room for
    /// its new tokens), writes their keys and values into those blocks, and returns the requested
    /// logits. It changes no cache's length, blocks or prefix-cache entries: the caller records
    /// the new positions (`KVCache.advance`) once it knows which it keeps.
    public func compute(_ items: [Item]) throws -> [[Float]] {
        let c = config
        let h = c.hiddenSize
        var t = 0
        for it in items {
            for tok in it.tokens where tok < 0 || Int(tok) >= c.vocabSize {
                throw ForwardError(description: "token id \(tok) is outside the vocabulary (0..<\(c.vocabSize))")
            }
            guard it.cache.length + it.tokens.count <= c.maxPositions else {
                throw ForwardError(description: "sequence of \(it.cache.length + it.tokens.count) tokens exceeds the context of \(c.maxPositions)")
            }
            t += it.tokens.count
        }
        guard t > 0 else { return items.map { _ in [] } }
        let s = scratch.ensure(tokens: t, config: c)

        // Embedding lookup.
        var row = 0
        for it in items {
            for tok in it.tokens {
                weights.embed.copyRow(Int(tok), into: s.x.pointer + row * h)
                row += 1
            }
        }
        for it in items where it.cache.blocks.count * it.cache.pool.blockSize < it.cache.length + it.tokens.count {
            throw ForwardError(description: "the KV cache has no room reserved for \(it.tokens.count) more positions")
        }
        // Each row's sequence and position (its key/value slot, and how far it attends).
        var rowItem: [Int] = [], rowPos: [Int] = []
        rowItem.reserveCapacity(t)
        rowPos.reserveCapacity(t)
        for (k, it) in items.enumerated() {
            for i in 0..<it.tokens.count {
                rowItem.append(k)
                rowPos.append(it.cache.length + i)
            }
        }
        let layout = BatchLayout(rowItem: rowItem, rowPos: rowPos)
        // Adapters: the base projections run once over all rows; each adapter then adds its
        // low-rank update to its own rows (consecutive items with one adapter form one run).
        var runs: [(adapter: LoRAAdapter, start: Int, count: Int)] = []
        var start = 0
        for it in items {
            let n = it.tokens.count
            if let a = it.adapter, n > 0 {
                if let last = runs.last, last.adapter === a, last.start + last.count == start {
                    runs[runs.count - 1].count += n
                } else {
                    runs.append((a, start, n))
                }
            }
            start += n
        }
        let loraTmp = s.loraScratch(t * (runs.map(\.adapter.maxRank).max() ?? 0))
        let lora: LoRAHook? = runs.isEmpty ? nil : { p, l, x, inDim, out, outDim in
            for run in runs {
                guard let u = run.adapter.update(layer: l, p) else { continue }
                u.apply(x + run.start * inDim, n: run.count, inDim: inDim, out: out + run.start * outDim, outDim: outDim, tmp: loraTmp)
            }
        }
        let kv = PagedKeyValues(caches: items.map(\.cache), width: c.kvHeads * c.headDim, kvHeads: c.kvHeads)
        let io = LayerIO(x: s.x.pointer, xn: s.xn.pointer, q: s.q.pointer, k: s.k.pointer, v: s.v.pointer, attn: s.attn.pointer,
                         gate: s.gate.pointer, up: s.up.pointer, act: s.gate.pointer)
        for l in weights.layers.indices {
            layerForward(l, io, layout: layout, kv: kv, lora: lora)
        }

        // Final norm and output head, only for the rows that want logits.
        var wanted: [Int] = []
        var perItem: [Range<Int>] = []
        var r0 = 0
        for it in items {
            let start = wanted.count
            switch it.logits {
            case .none: break
            case .last: if !it.tokens.isEmpty { wanted.append(r0 + it.tokens.count - 1) }
            case .all: wanted.append(contentsOf: r0..<(r0 + it.tokens.count))
            }
            perItem.append(start..<wanted.count)
            r0 += it.tokens.count
        }
        guard !wanted.isEmpty else { return items.map { _ in [] } }
        for (i, r) in wanted.enumerated() {
            Ops.rmsNorm(s.x.pointer + r * h, weight: weights.norm.pointer, out: s.xn.pointer + i * h, rows: 1, dim: h, eps: c.rmsNormEps)
        }
        let v = c.vocabSize
        var out = [Float](repeating: 0, count: wanted.count * v)
        out.withUnsafeMutableBufferPointer { weights.lmHead.multiply(s.xn.pointer, n: wanted.count, into: $0.baseAddress!, accumulate: false) }
        return perItem.map { Array(out[($0.lowerBound * v)..<($0.upperBound * v)]) }
    }

    /// Adds a LoRA update to a projection's output: (projection, layer, input [rows × in], in,
    /// output [rows × out], out).
    typealias LoRAHook = (Projection, Int, UnsafeMutablePointer<Float>, Int, UnsafeMutablePointer<Float>, Int) -> Void

    /// The buffers one decoder layer reads and writes, for all rows of the batch. Serving
    /// points them at the reused scratch; training points q, k, v, attn, gate and up at the
    /// layer's slots in its activation store and asks for the copies its backward needs.
    struct LayerIO {
        /// The residual stream: the layer's input, replaced by its output.
        var x, xn, q, k, v, attn, gate, up: UnsafeMutablePointer<Float>
        /// Where silu(gate) · up goes: `gate` itself when serving (in place), elsewhere when
        /// training (the backward needs gate's pre-activation).
        var act: UnsafeMutablePointer<Float>
        /// Training only: copies of the layer's input, of the residual between its two blocks,
        /// and of q and k as projected (before Qwen3's q/k norm and RoPE).
        var saveInput, saveMiddle, saveQ, saveK: UnsafeMutablePointer<Float>?
    }

    /// One decoder layer over every row of `layout`: attention (reading keys and values
    /// through `kv`) and the feed-forward block, each added to the residual `io.x`.
    func layerForward(_ l: Int, _ io: LayerIO, layout: BatchLayout, kv: KeyValueAccess, lora: LoRAHook?) {
        let c = config, w = weights.layers[l], t = layout.rows
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim, hd = c.headDim
        if let dst = io.saveInput { dst.update(from: io.x, count: t * h) }
        // Attention block.
        Ops.rmsNorm(io.x, weight: w.inputNorm.pointer, out: io.xn, rows: t, dim: h, eps: c.rmsNormEps)
        CompactMatrix.multiply([(w.q, io.q), (w.k, io.k), (w.v, io.v)], io.xn, n: t)
        if let lora {
            lora(.q, l, io.xn, h, io.q, qw)
            lora(.k, l, io.xn, h, io.k, kvw)
            lora(.v, l, io.xn, h, io.v, kvw)
        }
        if let b = w.qBias { Ops.addBias(io.q, b.pointer, rows: t, dim: qw) }
        if let b = w.kBias { Ops.addBias(io.k, b.pointer, rows: t, dim: kvw) }
        if let b = w.vBias { Ops.addBias(io.v, b.pointer, rows: t, dim: kvw) }
        if let dst = io.saveQ { dst.update(from: io.q, count: t * qw) }
        if let dst = io.saveK { dst.update(from: io.k, count: t * kvw) }
        if let qn = w.qNorm, let kn = w.kNorm {
            Ops.rmsNorm(io.q, weight: qn.pointer, out: io.q, rows: t * c.heads, dim: hd, eps: c.rmsNormEps)
            Ops.rmsNorm(io.k, weight: kn.pointer, out: io.k, rows: t * c.kvHeads, dim: hd, eps: c.rmsNormEps)
        }
        for r in 0..<t {
            let pos = layout.rowPos[r]
            Ops.rope(io.q + r * qw, heads: c.heads, headDim: hd, pos: pos, invFreq: invFreq.pointer)
            Ops.rope(io.k + r * kvw, heads: c.kvHeads, headDim: hd, pos: pos, invFreq: invFreq.pointer)
        }
        kv.store(layer: l, k: io.k, v: io.v, layout: layout)
        let group = c.heads / c.kvHeads
        let workers = t >= 2 ? Attention.workers : 1
        let perWorker = Attention.scratchPerWorker(layout, group: group, headDim: hd)
        Attention.rows(q: io.q, out: io.attn, layout: layout, kv: kv, layer: l, config: c,
                       scratch: scratch.scores(workers * perWorker), scratchPerWorker: perWorker, workers: workers)
        w.o.multiply(io.attn, n: t, into: io.x, accumulate: true)
        lora?(.o, l, io.attn, qw, io.x, h)
        if let dst = io.saveMiddle { dst.update(from: io.x, count: t * h) }

        // Feed-forward block.
        Ops.rmsNorm(io.x, weight: w.postNorm.pointer, out: io.xn, rows: t, dim: h, eps: c.rmsNormEps)
        CompactMatrix.multiply([(w.gate, io.gate), (w.up, io.up)], io.xn, n: t)
        if let lora {
            lora(.gate, l, io.xn, h, io.gate, c.intermediateSize)
            lora(.up, l, io.xn, h, io.up, c.intermediateSize)
        }
        if io.act != io.gate { io.act.update(from: io.gate, count: t * c.intermediateSize) }
        Ops.siluMul(io.act, io.up, count: t * c.intermediateSize)
        w.down.multiply(io.act, n: t, into: io.x, accumulate: true)
        lora?(.down, l, io.act, c.intermediateSize, io.x, h)
    }

    /// Activation buffers for up to `capacity` tokens, grown when a larger batch comes.
    final class Scratch {
        var capacity = 0
        var x = FloatBuffer(count: 0), xn = FloatBuffer(count: 0), q = FloatBuffer(count: 0)
        var k = FloatBuffer(count: 0), v = FloatBuffer(count: 0), attn = FloatBuffer(count: 0)
        var gate = FloatBuffer(count: 0), up = FloatBuffer(count: 0)
        private var scoreBuffer = FloatBuffer(count: 0)
        private var loraBuffer = FloatBuffer(count: 0)

        func ensure(tokens t: Int, config c: QwenConfig) -> Scratch {
            if t > capacity {
                let n = max(t, capacity * 2)
                x = FloatBuffer(count: n * c.hiddenSize)
                xn = FloatBuffer(count: n * c.hiddenSize)
                q = FloatBuffer(count: n * c.heads * c.headDim)
                attn = FloatBuffer(count: n * c.heads * c.headDim)
                k = FloatBuffer(count: n * c.kvHeads * c.headDim)
                v = FloatBuffer(count: n * c.kvHeads * c.headDim)
                gate = FloatBuffer(count: n * c.intermediateSize)
                up = FloatBuffer(count: n * c.intermediateSize)
                capacity = n
            }
            return self
        }

        func scores(_ n: Int) -> UnsafeMutablePointer<Float> {
            if scoreBuffer.count < n { scoreBuffer = FloatBuffer(count: max(n, scoreBuffer.count * 2)) }
            return scoreBuffer.pointer
        }

        func loraScratch(_ n: Int) -> UnsafeMutablePointer<Float> {
            if loraBuffer.count < n { loraBuffer = FloatBuffer(count: max(n, loraBuffer.count * 2)) }
            return loraBuffer.pointer
        }
    }
}
