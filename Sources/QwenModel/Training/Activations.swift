import QwenKernels

/// What one decoder layer's backward needs from its forward, for every row of the batch
/// (llm.c keeps these in one struct; here one per layer, filled by `layerForward`).
final class LayerActivations {
    let xIn, xMid, qRaw, kRaw, q, k, v, attn, gate, up: FloatBuffer

    init(rows t: Int, config c: QwenConfig) {
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim, f = c.intermediateSize
        xIn = FloatBuffer(count: t * h)
        xMid = FloatBuffer(count: t * h)
        qRaw = FloatBuffer(count: t * qw)
        kRaw = FloatBuffer(count: t * kvw)
        q = FloatBuffer(count: t * qw)
        k = FloatBuffer(count: t * kvw)
        v = FloatBuffer(count: t * kvw)
        attn = FloatBuffer(count: t * qw)
        gate = FloatBuffer(count: t * f)
        up = FloatBuffer(count: t * f)
    }

    /// Floats one row takes.
    static func floatsPerRow(_ c: QwenConfig) -> Int {
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim
        return 2 * h + 3 * qw + 3 * kvw + kvw + 2 * c.intermediateSize
    }
}

/// The buffers of one training pass over a batch of `rows` rows: each back-propagated
/// layer's activations (or, with gradient checkpointing, only each one's input plus one set
/// that is recomputed layer by layer during the backward), and the backward's scratch.
final class TrainingBuffers {
    let rows: Int
    let layers: [LayerActivations?]
    /// Checkpointing: the inputs of the back-propagated layers, and the one recomputed set.
    let checkpoints: [FloatBuffer?]
    let work: LayerActivations
    let x, xn, act, dx, dxn, dAct, dUp, dAttn, dQ, dK, dV: FloatBuffer
    /// LoRA scratch: x·Aᵀ and dY·B ([rows × rank]), and a dropped-out input or dX term ([rows × widest input]).
    let u, g, dropped, loraDX: FloatBuffer

    init(rows t: Int, config c: QwenConfig, lowestLayer: Int, checkpoint: Bool, rank: Int, dropout: Bool) {
        rows = t
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim, f = c.intermediateSize
        layers = (0..<c.layers).map { l in (checkpoint || l < lowestLayer) ? nil : LayerActivations(rows: t, config: c) }
        checkpoints = (0..<c.layers).map { l in (checkpoint && l >= lowestLayer) ? FloatBuffer(count: t * h) : nil }
        work = LayerActivations(rows: t, config: c)
        x = FloatBuffer(count: t * h)
        xn = FloatBuffer(count: t * h)
        act = FloatBuffer(count: t * f)
        dx = FloatBuffer(count: t * h)
        dxn = FloatBuffer(count: t * h)
        dAct = FloatBuffer(count: t * f)
        dUp = FloatBuffer(count: t * f)
        dAttn = FloatBuffer(count: t * qw)
        dQ = FloatBuffer(count: t * qw)
        dK = FloatBuffer(count: t * kvw)
        dV = FloatBuffer(count: t * kvw)
        u = FloatBuffer(count: t * rank)
        g = FloatBuffer(count: t * rank)
        let widest = max(h, qw, f)
        dropped = FloatBuffer(count: dropout ? t * widest : 0)
        loraDX = FloatBuffer(count: dropout ? t * widest : 0)
    }

    /// Bytes a pass over `rows` rows takes, before allocating anything (the memory plan).
    static func plannedBytes(rows t: Int, longest: Int, config c: QwenConfig, lowestLayer: Int, checkpoint: Bool, rank: Int,
                             dropout: Bool, logitRows: Int) -> Int {
        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim, f = c.intermediateSize
        let trained = c.layers - lowestLayer
        var floats = LayerActivations.floatsPerRow(c) * t * (checkpoint ? 1 : trained + 1)
        if checkpoint { floats += trained * t * h }
        floats += t * (2 * h + f + 2 * h + 2 * f + 2 * qw + 2 * kvw + 2 * rank)
        if dropout { floats += 2 * t * max(h, qw, f) }
        floats += 2 * longest * longest  // attention probabilities and their gradient, one head at a time
        floats += logitRows * c.vocabSize + logitRows * 2 * h  // one chunk of logits
        floats += CompactMatrixTile.floats(c)
        return floats * 4
    }
}

/// The widest tile a transposed product expands (see CompactMatrix.transposedTileRows).
enum CompactMatrixTile {
    static func floats(_ c: QwenConfig) -> Int {
        CompactMatrix.transposedTileRows * max(c.hiddenSize, c.intermediateSize, c.heads * c.headDim)
    }
}

/// The memory plan of a training pass without building one (a fine-tuning job's admission).
public enum TrainingBuffersPlan {
    public static func bytes(rows: Int, longest: Int, config: QwenConfig, lowestLayer: Int, rank: Int, dropout: Bool,
                             checkpoint: Bool = false, logitRows: Int = 256) -> Int {
        TrainingBuffers.plannedBytes(rows: rows, longest: longest, config: config, lowestLayer: lowestLayer, checkpoint: checkpoint,
                                     rank: rank, dropout: dropout, logitRows: logitRows)
    }
}
