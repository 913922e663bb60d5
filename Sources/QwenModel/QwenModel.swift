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
    private var scratch = Scratch()

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
    /// cache, and returns the requested logits: one [rows × vocab] array per item.
    public func forward(_ items: [Item]) throws -> [[Float]] {
        let c = config
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim, hd = c.headDim
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
        for it in items where !it.cache.reserve(it.tokens.count) {
            throw ForwardError(description: "the KV cache is full")
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
        let maxCtx = (rowPos.max() ?? 0) + 1
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
        func lora(_ p: Projection, _ l: Int, _ x: UnsafeMutablePointer<Float>, _ inDim: Int, _ out: UnsafeMutablePointer<Float>, _ outDim: Int) {
            for run in runs {
                guard let u = run.adapter.update(layer: l, p) else { continue }
                u.apply(x + run.start * inDim, n: run.count, inDim: inDim, out: out + run.start * outDim, outDim: outDim, tmp: loraTmp)
            }
        }
        let group = c.heads / c.kvHeads
        let workers = t >= 2 ? Attention.workers : 1
        let scoreBuffer = s.scores(workers * group * maxCtx)

        for (l, w) in weights.layers.enumerated() {
            // Attention block.
            Ops.rmsNorm(s.x.pointer, weight: w.inputNorm.pointer, out: s.xn.pointer, rows: t, dim: h, eps: c.rmsNormEps)
            CompactMatrix.multiply([(w.q, s.q.pointer), (w.k, s.k.pointer), (w.v, s.v.pointer)], s.xn.pointer, n: t)
            if !runs.isEmpty {
                lora(.q, l, s.xn.pointer, h, s.q.pointer, qw)
                lora(.k, l, s.xn.pointer, h, s.k.pointer, kvw)
                lora(.v, l, s.xn.pointer, h, s.v.pointer, kvw)
            }
            if let b = w.qBias { Ops.addBias(s.q.pointer, b.pointer, rows: t, dim: qw) }
            if let b = w.kBias { Ops.addBias(s.k.pointer, b.pointer, rows: t, dim: kvw) }
            if let b = w.vBias { Ops.addBias(s.v.pointer, b.pointer, rows: t, dim: kvw) }
            if let qn = w.qNorm, let kn = w.kNorm {
                Ops.rmsNorm(s.q.pointer, weight: qn.pointer, out: s.q.pointer, rows: t * c.heads, dim: hd, eps: c.rmsNormEps)
                Ops.rmsNorm(s.k.pointer, weight: kn.pointer, out: s.k.pointer, rows: t * c.kvHeads, dim: hd, eps: c.rmsNormEps)
            }
            for r in 0..<t {
                let pos = rowPos[r]
                Ops.rope(s.q.pointer + r * qw, heads: c.heads, headDim: hd, pos: pos, invFreq: invFreq.pointer)
                Ops.rope(s.k.pointer + r * kvw, heads: c.kvHeads, headDim: hd, pos: pos, invFreq: invFreq.pointer)
                let cache = items[rowItem[r]].cache
                let bs = cache.pool.blockSize
                let slot = (Int(cache.blocks[pos / bs]) * bs + pos % bs) * kvw
                (cache.pool.keys[l].pointer + slot).update(from: s.k.pointer + r * kvw, count: kvw)
                (cache.pool.values[l].pointer + slot).update(from: s.v.pointer + r * kvw, count: kvw)
            }
            Attention.rows(q: s.q.pointer, out: s.attn.pointer, rows: t, rowItem: rowItem, rowPos: rowPos, items: items,
                           layer: l, config: c, scratch: scoreBuffer, scratchPerWorker: group * maxCtx, workers: workers)
            w.o.multiply(s.attn.pointer, n: t, into: s.x.pointer, accumulate: true)
            if !runs.isEmpty { lora(.o, l, s.attn.pointer, qw, s.x.pointer, h) }

            // Feed-forward block.
            Ops.rmsNorm(s.x.pointer, weight: w.postNorm.pointer, out: s.xn.pointer, rows: t, dim: h, eps: c.rmsNormEps)
            CompactMatrix.multiply([(w.gate, s.gate.pointer), (w.up, s.up.pointer)], s.xn.pointer, n: t)
            if !runs.isEmpty {
                lora(.gate, l, s.xn.pointer, h, s.gate.pointer, c.intermediateSize)
                lora(.up, l, s.xn.pointer, h, s.up.pointer, c.intermediateSize)
            }
            Ops.siluMul(s.gate.pointer, s.up.pointer, count: t * c.intermediateSize)
            w.down.multiply(s.gate.pointer, n: t, into: s.x.pointer, accumulate: true)
            if !runs.isEmpty { lora(.down, l, s.gate.pointer, c.intermediateSize, s.x.pointer, h) }
        }
        for it in items { it.cache.advance(it.tokens) }

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
