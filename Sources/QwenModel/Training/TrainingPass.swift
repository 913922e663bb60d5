import CQwenKernels
import Foundation
import QwenKernels

/// A batch of whole sequences to train on. Target j of a sequence (its token j, predicted from
/// the tokens before it) is trained when max(offset, 1) ≤ j < count: offset 0 trains every
/// token, a prompt's length trains only the completion (mlx-lm's mask_prompt). Sequences are
/// stacked without padding, so no pad ever enters the loss.
public struct TrainingBatch: Sendable {
    public let sequences: [[Int32]]
    public let offsets: [Int]
    /// Optional per-token marks (the OpenAI fine-tuning rules: only assistant turns whose weight
    /// is not 0): target j is trained when j ≥ max(offset, 1) and masks[s][j].
    public let masks: [[Bool]?]

    public init(sequences: [[Int32]], offsets: [Int], masks: [[Bool]?]? = nil) {
        precondition(sequences.count == offsets.count)
        self.sequences = sequences
        self.offsets = offsets
        self.masks = masks ?? sequences.map { _ in nil }
        precondition(self.masks.count == sequences.count)
    }

    /// Whether target j of sequence s counts in the loss.
    @inline(__always) func trains(_ s: Int, _ j: Int) -> Bool {
        j >= max(offsets[s], 1) && j < sequences[s].count && (masks[s].map { j < $0.count && $0[j] } ?? true)
    }

    /// Rows the model runs: every token but each sequence's last (it predicts nothing).
    public var rows: Int { sequences.reduce(0) { $0 + max($1.count - 1, 0) } }
    /// Targets the loss counts.
    public var trainedTokens: Int {
        sequences.indices.reduce(0) { total, s in total + (0..<sequences[s].count).filter { trains(s, $0) }.count }
    }
}

/// Forward, loss and backward of a LoRA-adapted model over one batch: the serving model's
/// own `layerForward` with an activation store, then each layer's backward in reverse, down
/// to the lowest adapted layer. Gradients accumulate in the parameters' gradient buffers.
public final class LoRATrainingPass {
    public let model: QwenModel
    public let parameters: LoRAParameters
    public let checkpoint: Bool
    /// Rows of logits computed at a time (the [rows × vocab] matrix never exists whole). 256 rows
    /// (155 MB at Qwen's vocabulary) measured 1.2× (f32) and 1.3× (int8) the training speed of 32:
    /// the head's products then run as wide sgemm / int8 products.
    public let logitRows: Int
    /// Seeds LoRA dropout: a mask depends on (seed, step, layer, projection, element).
    public var dropoutSeed: UInt64 = 0
    public var dropoutStep: UInt64 = 0
    private var buffers: TrainingBuffers?
    /// Targets the model ranked first during the pass in progress (token accuracy).
    private var correct = 0
    private var logits = FloatBuffer(count: 0)

    public init(model: QwenModel, parameters: LoRAParameters, checkpoint: Bool = false, logitRows: Int = 256) {
        self.model = model
        self.parameters = parameters
        self.checkpoint = checkpoint
        self.logitRows = max(1, logitRows)
    }

    /// Bytes a batch of `rows` rows whose longest sequence has `longest` tokens needs
    /// (activations, scratch, one chunk of logits), planned before the first step.
    public func plannedBytes(rows: Int, longest: Int) -> Int {
        TrainingBuffers.plannedBytes(rows: rows, longest: longest, config: model.config, lowestLayer: parameters.lowestLayer,
                                     checkpoint: checkpoint, rank: parameters.rank, dropout: parameters.dropout > 0,
                                     logitRows: logitRows)
            + parameters.parameterCount * 4 * 4  // values, gradients, two optimizer moments
    }

    /// The loss of the batch (mean cross-entropy over its trained targets) without gradients.
    public func loss(_ batch: TrainingBatch) throws -> (loss: Float, tokens: Int) {
        try run(batch, gradientScale: nil)
    }

    /// Loss, and gradients added to the parameters' gradient buffers, each multiplied by
    /// `gradientScale` (1 / accumulation steps).
    @discardableResult
    public func lossAndGradients(_ batch: TrainingBatch, gradientScale: Float = 1) throws -> (loss: Float, tokens: Int) {
        try run(batch, gradientScale: gradientScale)
    }

    private func run(_ batch: TrainingBatch, gradientScale: Float?) throws -> (loss: Float, tokens: Int) {
        let step = try begin(batch, gradientScale: gradientScale)
        while try !step.advance() {}
        return step.result
    }

    /// Starts a pass over `batch` that runs a piece at a time (a layer's forward, a chunk of
    /// the loss, a layer's backward), so a serving engine can interleave it with inference.
    /// nil gradientScale: the loss only. Pieces must run in order and to the end before the
    /// next pass begins (they share this pass's buffers).
    public func begin(_ batch: TrainingBatch, gradientScale: Float?) throws -> Step {
        let c = model.config
        let h = c.hiddenSize
        let inputs = batch.sequences.map { Array($0.dropLast()) }
        let lengths = inputs.map(\.count)
        let t = lengths.reduce(0, +)
        let trained = batch.trainedTokens
        for s in batch.sequences {
            guard s.count <= c.maxPositions else {
                throw QwenModel.ForwardError(description: "sequence of \(s.count) tokens exceeds the context of \(c.maxPositions)")
            }
            for tok in s where tok < 0 || Int(tok) >= c.vocabSize {
                throw QwenModel.ForwardError(description: "token id \(tok) is outside the vocabulary (0..<\(c.vocabSize))")
            }
        }
        guard t > 0, trained > 0 else { return Step(pass: self, empty: true) }
        if buffers == nil || buffers!.rows < t {
            buffers = nil
            buffers = TrainingBuffers(rows: t, config: c, lowestLayer: parameters.lowestLayer, checkpoint: checkpoint,
                                      rank: parameters.rank, dropout: parameters.dropout > 0)
        }
        let b = buffers!
        var row = 0
        for s in inputs {
            for tok in s {
                model.weights.embed.copyRow(Int(tok), into: b.x.pointer + row * h)
                row += 1
            }
        }
        var targets: [(row: Int, token: Int32)] = []
        var start = 0
        for (k, s) in batch.sequences.enumerated() {
            for j in 0..<s.count where batch.trains(k, j) { targets.append((start + j - 1, s[j])) }
            start += max(s.count - 1, 0)
        }
        if gradientScale != nil { b.dx.pointer.update(repeating: 0, count: t * h) }
        let v = c.vocabSize
        if logits.count < logitRows * v { logits = FloatBuffer(count: logitRows * v) }
        correct = 0
        let step = Step(pass: self, empty: false)
        step.lengths = lengths
        step.rows = t
        step.layout = BatchLayout(lengths: lengths)
        step.targets = targets
        step.trained = trained
        step.gradientScale = gradientScale
        step.hook = loraHook(rows: t, b)
        return step
    }

    /// One pass in pieces (see `begin`).
    public final class Step {
        enum Phase { case forward(Int), loss(Int), backward(Int), done }
        let pass: LoRATrainingPass
        var phase: Phase
        var lengths: [Int] = [], rows = 0, trained = 0
        var layout = BatchLayout(rowItem: [], rowPos: [])
        var targets: [(row: Int, token: Int32)] = []
        var gradientScale: Float?
        var hook: QwenModel.LoRAHook?
        var total: Double = 0

        init(pass: LoRATrainingPass, empty: Bool) {
            self.pass = pass
            phase = empty ? .done : .forward(0)
        }

        /// The mean cross-entropy over the trained targets and their count (once done).
        public var result: (loss: Float, tokens: Int) { trained > 0 ? (Float(total / Double(trained)), trained) : (0, 0) }
        /// Trained targets that were the model's top-ranked token (once done).
        public var correct: Int { pass.correct }
        public var isDone: Bool { if case .done = phase { return true } else { return false } }

        /// Runs the next piece; true when the pass is complete.
        public func advance() throws -> Bool {
            let p = pass, c = p.model.config
            switch phase {
            case .forward(let l):
                p.layerForward(l, rows: rows, layout: layout, lengths: lengths, p.buffers!, saving: gradientScale != nil, hook: hook!)
                phase = l + 1 < c.layers ? .forward(l + 1) : .loss(0)
            case .loss(let c0):
                total += p.lossChunk(targets[c0..<min(targets.count, c0 + p.logitRows)], trained: trained, gradientScale: gradientScale)
                let next = c0 + p.logitRows
                if next < targets.count { phase = .loss(next) } else {
                    phase = gradientScale == nil || p.parameters.lowestLayer >= c.layers ? .done : .backward(c.layers - 1)
                }
            case .backward(let l):
                p.backwardLayer(l, rows: rows, layout: layout, lengths: lengths, hook: hook!)
                phase = l > p.parameters.lowestLayer ? .backward(l - 1) : .done
            case .done: break
            }
            return isDone
        }
    }

    /// The loss of some trained rows, and (with a gradient scale) their gradient into b.dx.
    private func lossChunk(_ part: ArraySlice<(row: Int, token: Int32)>, trained: Int, gradientScale: Float?) -> Double {
        let c = model.config, h = c.hiddenSize, v = c.vocabSize, b = buffers!
        let n = part.count
        let xs = b.work.xIn.pointer  // [n ≤ t rows × h] staging: work's input copy is untouched until the backward
        let gscale = (gradientScale ?? 0) / Float(trained)
        for (i, tr) in part.enumerated() { (xs + i * h).update(from: b.x.pointer + tr.row * h, count: h) }
        Ops.rmsNorm(xs, weight: model.weights.norm.pointer, out: b.xn.pointer, rows: n, dim: h, eps: c.rmsNormEps)
        model.weights.lmHead.multiply(b.xn.pointer, n: n, into: logits.pointer, accumulate: false)
        var total: Double = 0
        for (i, tr) in part.enumerated() {
            var top: Int32 = 0
            total += Double(qwen_cross_entropy_row(logits.pointer + i * v, v, Int(tr.token), gscale, &top))
            correct += Int(top)
        }
        guard gradientScale != nil else { return total }
        let dxn = b.dxn.pointer
        model.weights.lmHead.multiplyTransposed(logits.pointer, n: n, into: dxn, accumulate: false)
        Ops.rmsNormBackward(dxn, x: xs, weight: model.weights.norm.pointer, dx: dxn, rows: n, dim: h, eps: c.rmsNormEps,
                            accumulate: false)
        for (i, tr) in part.enumerated() { Ops.add(b.dx.pointer + tr.row * h, dxn + i * h, count: h) }
        return total
    }

    /// Layer l's backward (recomputing its activations first when checkpointing).
    private func backwardLayer(_ l: Int, rows t: Int, layout: BatchLayout, lengths: [Int], hook: @escaping QwenModel.LoRAHook) {
        let b = buffers!, h = model.config.hiddenSize
        if checkpoint {
            // Recompute this layer's activations from its saved input.
            let x = b.xn  // free during the backward until the layer needs it
            x.pointer.update(from: b.checkpoints[l]!.pointer, count: t * h)
            let io = QwenModel.LayerIO(x: x.pointer, xn: b.dxn.pointer, q: b.work.q.pointer, k: b.work.k.pointer,
                                       v: b.work.v.pointer, attn: b.work.attn.pointer, gate: b.work.gate.pointer,
                                       up: b.work.up.pointer, act: b.act.pointer, saveInput: b.work.xIn.pointer,
                                       saveMiddle: b.work.xMid.pointer, saveQ: b.work.qRaw.pointer, saveK: b.work.kRaw.pointer)
            model.layerForward(l, io, layout: layout, kv: stacked(lengths, b.work), lora: hook)
        }
        layerBackward(l, rows: t, layout: layout, lengths: lengths, acts: b.layers[l] ?? b.work, b,
                      needInputGradient: l > parameters.lowestLayer)
    }

    private func stacked(_ lengths: [Int], _ a: LayerActivations) -> StackedKeyValues {
        let k = UnsafePointer(a.k.pointer), v = UnsafePointer(a.v.pointer)
        return StackedKeyValues(lengths: lengths, width: model.config.kvHeads * model.config.headDim, keys: { _ in k }, values: { _ in v })
    }

    private func layerForward(_ l: Int, rows t: Int, layout: BatchLayout, lengths: [Int], _ b: TrainingBuffers, saving: Bool,
                              hook: @escaping QwenModel.LoRAHook) {
        let w = b.work
        if saving, let a = b.layers[l] {
            let io = QwenModel.LayerIO(x: b.x.pointer, xn: b.xn.pointer, q: a.q.pointer, k: a.k.pointer, v: a.v.pointer,
                                       attn: a.attn.pointer, gate: a.gate.pointer, up: a.up.pointer, act: b.act.pointer,
                                       saveInput: a.xIn.pointer, saveMiddle: a.xMid.pointer, saveQ: a.qRaw.pointer, saveK: a.kRaw.pointer)
            model.layerForward(l, io, layout: layout, kv: stacked(lengths, a), lora: hook)
            return
        }
        var io = QwenModel.LayerIO(x: b.x.pointer, xn: b.xn.pointer, q: w.q.pointer, k: w.k.pointer, v: w.v.pointer,
                                   attn: w.attn.pointer, gate: w.gate.pointer, up: w.up.pointer, act: w.gate.pointer)
        if saving { io.saveInput = b.checkpoints[l]?.pointer }
        model.layerForward(l, io, layout: layout, kv: stacked(lengths, w), lora: parameters.tensors.isEmpty ? nil : hook)
    }

    // MARK: LoRA forward and backward

    /// The dropout mask's keep decision for element i of (layer, projection)'s input.
    @inline(__always) private func keeps(_ key: UInt64, _ i: Int, _ p: Float) -> Bool {
        let r = SplitMix.mix(key &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15)
        return Float(r >> 40) / Float(1 << 24) >= p
    }

    private func dropoutKey(_ l: Int, _ p: Projection) -> UInt64 {
        SplitMix.mix(dropoutSeed ^ SplitMix.mix(dropoutStep &* 1_000_003 &+ UInt64(l) &* 31 &+ UInt64(p.rawValue)))
    }

    /// x itself, or x with the dropout mask applied (scaled by 1/(1 − p)) in `b.dropped`.
    private func droppedInput(_ x: UnsafeMutablePointer<Float>, rows t: Int, inDim: Int, _ l: Int, _ p: Projection,
                              _ b: TrainingBuffers) -> UnsafeMutablePointer<Float> {
        let pd = parameters.dropout
        guard pd > 0 else { return x }
        let key = dropoutKey(l, p), keep = 1 / (1 - pd), out = b.dropped.pointer
        for i in 0..<(t * inDim) { out[i] = keeps(key, i, pd) ? x[i] * keep : 0 }
        return out
    }

    private func loraHook(rows t: Int, _ b: TrainingBuffers) -> QwenModel.LoRAHook {
        { [parameters] p, l, x, inDim, out, outDim in
            guard let lt = parameters.tensor(layer: l, p) else { return }
            let xin = self.droppedInput(x, rows: t, inDim: inDim, l, p, b)
            let r = lt.rank
            BLAS.sgemm(transB: true, m: t, n: r, k: inDim, a: xin, lda: inDim, b: lt.a.pointer, ldb: inDim, c: b.u.pointer, ldc: r)
            BLAS.sgemm(m: t, n: outDim, k: r, alpha: lt.scale, a: b.u.pointer, lda: r, b: lt.bt.pointer, ldb: outDim,
                       beta: 1, c: out, ldc: outDim)
        }
    }

    /// Gradients of (layer, p)'s A and Bᵀ from its input `x` and output gradient `dy`; adds
    /// the update's share of the input gradient to `dx` when given.
    private func loraBackward(_ p: Projection, _ l: Int, x: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                              dx: UnsafeMutablePointer<Float>?, rows t: Int, _ b: TrainingBuffers) {
        guard let lt = parameters.tensor(layer: l, p) else { return }
        let r = lt.rank, inDim = lt.inDim, outDim = lt.outDim
        let xin = droppedInput(x, rows: t, inDim: inDim, l, p, b)
        let u = b.u.pointer, g = b.g.pointer
        BLAS.sgemm(transB: true, m: t, n: r, k: inDim, a: xin, lda: inDim, b: lt.a.pointer, ldb: inDim, c: u, ldc: r)
        // dBᵀ += scale · uᵀ · dy;  g = scale · dy · B;  dA += gᵀ · x̃.
        BLAS.sgemm(transA: true, m: r, n: outDim, k: t, alpha: lt.scale, a: u, lda: r, b: dy, ldb: outDim,
                   beta: 1, c: lt.gradBt.pointer, ldc: outDim)
        BLAS.sgemm(transB: true, m: t, n: r, k: outDim, alpha: lt.scale, a: dy, lda: outDim, b: lt.bt.pointer, ldb: outDim,
                   c: g, ldc: r)
        BLAS.sgemm(transA: true, m: r, n: inDim, k: t, a: g, lda: r, b: xin, ldb: inDim, beta: 1, c: lt.gradA.pointer, ldc: inDim)
        guard let dx else { return }
        if parameters.dropout > 0 {
            let tmp = b.loraDX.pointer, pd = parameters.dropout, keep = 1 / (1 - pd), key = dropoutKey(l, p)
            BLAS.sgemm(m: t, n: inDim, k: r, a: g, lda: r, b: lt.a.pointer, ldb: inDim, c: tmp, ldc: inDim)
            for i in 0..<(t * inDim) where keeps(key, i, pd) { dx[i] += tmp[i] * keep }
        } else {
            BLAS.sgemm(m: t, n: inDim, k: r, a: g, lda: r, b: lt.a.pointer, ldb: inDim, beta: 1, c: dx, ldc: inDim)
        }
    }

    // MARK: The layer's backward

    /// Replaces b.dx (the gradient of the layer's output) by the gradient of its input, and
    /// adds the layer's LoRA gradients. At the lowest adapted layer only the LoRA gradients.
    private func layerBackward(_ l: Int, rows t: Int, layout: BatchLayout, lengths: [Int], acts a: LayerActivations,
                               _ b: TrainingBuffers, needInputGradient: Bool) {
        let c = model.config, w = model.weights.layers[l], ps = parameters
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim, hd = c.headDim, f = c.intermediateSize
        let dx = b.dx.pointer, xn = b.xn.pointer, dxn = b.dxn.pointer
        let eps = c.rmsNormEps

        // Feed-forward block: x_out = x_mid + down(silu(gate(xn2)) · up(xn2)).
        let dAct = b.dAct.pointer, dUp = b.dUp.pointer
        w.down.multiplyTransposed(dx, n: t, into: dAct, accumulate: false)
        if ps.tensor(layer: l, .down) != nil {
            b.act.pointer.update(from: a.gate.pointer, count: t * f)
            Ops.siluMul(b.act.pointer, a.up.pointer, count: t * f)
            loraBackward(.down, l, x: b.act.pointer, dy: dx, dx: dAct, rows: t, b)
        }
        Ops.siluMulBackward(dAct, gate: a.gate.pointer, up: a.up.pointer, dGate: dAct, dUp: dUp, count: t * f)
        w.gate.multiplyTransposed(dAct, n: t, into: dxn, accumulate: false)
        w.up.multiplyTransposed(dUp, n: t, into: dxn, accumulate: true)
        if ps.tensor(layer: l, .gate) != nil || ps.tensor(layer: l, .up) != nil {
            Ops.rmsNorm(a.xMid.pointer, weight: w.postNorm.pointer, out: xn, rows: t, dim: h, eps: eps)
            loraBackward(.gate, l, x: xn, dy: dAct, dx: dxn, rows: t, b)
            loraBackward(.up, l, x: xn, dy: dUp, dx: dxn, rows: t, b)
        }
        Ops.rmsNormBackward(dxn, x: a.xMid.pointer, weight: w.postNorm.pointer, dx: dx, rows: t, dim: h, eps: eps, accumulate: true)

        // Attention block: x_mid = x_in + o(attention(rope(norm(q)), rope(norm(k)), v)).
        let dAttn = b.dAttn.pointer, dQ = b.dQ.pointer, dK = b.dK.pointer, dV = b.dV.pointer
        w.o.multiplyTransposed(dx, n: t, into: dAttn, accumulate: false)
        loraBackward(.o, l, x: a.attn.pointer, dy: dx, dx: dAttn, rows: t, b)
        attentionBackward(a, dOut: dAttn, dQ: dQ, dK: dK, dV: dV, lengths: lengths)
        for r in 0..<t {
            Ops.ropeBackward(dQ + r * qw, heads: c.heads, headDim: hd, pos: layout.rowPos[r], invFreq: model.invFreq.pointer)
            Ops.ropeBackward(dK + r * kvw, heads: c.kvHeads, headDim: hd, pos: layout.rowPos[r], invFreq: model.invFreq.pointer)
        }
        if let qn = w.qNorm, let kn = w.kNorm {
            Ops.rmsNormBackward(dQ, x: a.qRaw.pointer, weight: qn.pointer, dx: dQ, rows: t * c.heads, dim: hd, eps: eps, accumulate: false)
            Ops.rmsNormBackward(dK, x: a.kRaw.pointer, weight: kn.pointer, dx: dK, rows: t * c.kvHeads, dim: hd, eps: eps, accumulate: false)
        }
        let qkvLoRA = ps.tensor(layer: l, .q) != nil || ps.tensor(layer: l, .k) != nil || ps.tensor(layer: l, .v) != nil
        if qkvLoRA { Ops.rmsNorm(a.xIn.pointer, weight: w.inputNorm.pointer, out: xn, rows: t, dim: h, eps: eps) }
        guard needInputGradient else {
            loraBackward(.q, l, x: xn, dy: dQ, dx: nil, rows: t, b)
            loraBackward(.k, l, x: xn, dy: dK, dx: nil, rows: t, b)
            loraBackward(.v, l, x: xn, dy: dV, dx: nil, rows: t, b)
            return
        }
        w.q.multiplyTransposed(dQ, n: t, into: dxn, accumulate: false)
        w.k.multiplyTransposed(dK, n: t, into: dxn, accumulate: true)
        w.v.multiplyTransposed(dV, n: t, into: dxn, accumulate: true)
        loraBackward(.q, l, x: xn, dy: dQ, dx: dxn, rows: t, b)
        loraBackward(.k, l, x: xn, dy: dK, dx: dxn, rows: t, b)
        loraBackward(.v, l, x: xn, dy: dV, dx: dxn, rows: t, b)
        Ops.rmsNormBackward(dxn, x: a.xIn.pointer, weight: w.inputNorm.pointer, dx: dx, rows: t, dim: h, eps: eps, accumulate: true)
    }

    private var probs = FloatBuffer(count: 0), dProbs = FloatBuffer(count: 0)

    /// Causal attention's backward, per sequence and head, recomputing the probabilities
    /// P = softmax(QKᵀ/√d) from the saved q and k: dV = Pᵀ·dO, dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O)),
    /// dQ = dS·K/√d, dK = dSᵀ·Q/√d (key/value heads shared by `group` query heads sum theirs).
    private func attentionBackward(_ a: LayerActivations, dOut: UnsafePointer<Float>, dQ: UnsafeMutablePointer<Float>,
                                   dK: UnsafeMutablePointer<Float>, dV: UnsafeMutablePointer<Float>, lengths: [Int]) {
        let c = model.config, hd = c.headDim, qw = c.heads * hd, kvw = c.kvHeads * hd, group = c.heads / c.kvHeads
        let scale = 1 / Float(hd).squareRoot()
        let longest = lengths.max() ?? 0
        if probs.count < longest * longest {
            probs = FloatBuffer(count: longest * longest)
            dProbs = FloatBuffer(count: longest * longest)
        }
        let t = lengths.reduce(0, +)
        dK.update(repeating: 0, count: t * kvw)
        dV.update(repeating: 0, count: t * kvw)
        let P = probs.pointer, dP = dProbs.pointer
        var r0 = 0
        for n in lengths {
            defer { r0 += n }
            guard n > 0 else { continue }
            for head in 0..<c.heads {
                let g = head / group
                let q = a.q.pointer + r0 * qw + head * hd, o = a.attn.pointer + r0 * qw + head * hd
                let k = a.k.pointer + r0 * kvw + g * hd, v = a.v.pointer + r0 * kvw + g * hd
                let dO = dOut + r0 * qw + head * hd
                BLAS.sgemm(transB: true, m: n, n: n, k: hd, alpha: scale, a: q, lda: qw, b: k, ldb: kvw, c: P, ldc: n)
                for i in 0..<n {
                    let row = P + i * n
                    Ops.softmax(row, count: i + 1)
                    for j in (i + 1)..<n { row[j] = 0 }
                }
                BLAS.sgemm(transA: true, m: n, n: hd, k: n, a: P, lda: n, b: dO, ldb: qw, beta: 1, c: dV + r0 * kvw + g * hd, ldc: kvw)
                BLAS.sgemm(transB: true, m: n, n: n, k: hd, a: dO, lda: qw, b: v, ldb: kvw, c: dP, ldc: n)
                for i in 0..<n {
                    var d: Float = 0
                    for e in 0..<hd { d += dO[i * qw + e] * o[i * qw + e] }
                    let pr = P + i * n, dr = dP + i * n
                    for j in 0...i { dr[j] = pr[j] * (dr[j] - d) }
                    for j in (i + 1)..<n { dr[j] = 0 }
                }
                BLAS.sgemm(m: n, n: hd, k: n, alpha: scale, a: dP, lda: n, b: k, ldb: kvw, c: dQ + r0 * qw + head * hd, ldc: qw)
                BLAS.sgemm(transA: true, m: n, n: hd, k: n, alpha: scale, a: dP, lda: n, b: q, ldb: qw, beta: 1,
                           c: dK + r0 * kvw + g * hd, ldc: kvw)
            }
        }
    }
}
