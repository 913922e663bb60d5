import QwenFormats
import QwenKernels

/// The parameters of a Qwen2/Qwen3 decoder, by role. Matrices are [out × in].
public final class QwenWeights: @unchecked Sendable {
    public struct Layer {
        public var inputNorm: FloatBuffer
        public var q, k, v, o: WeightMatrix
        public var qBias, kBias, vBias: FloatBuffer?
        public var qNorm, kNorm: FloatBuffer?
        public var postNorm: FloatBuffer
        public var gate, up, down: WeightMatrix
    }

    public let embed: WeightMatrix
    public let layers: [Layer]
    public let norm: FloatBuffer
    public let lmHead: WeightMatrix

    public init(embed: WeightMatrix, layers: [Layer], norm: FloatBuffer, lmHead: WeightMatrix) {
        self.embed = embed
        self.layers = layers
        self.norm = norm
        self.lmHead = lmHead
    }

    /// - f32Copies: keep an f32 copy of compact matrices for wide products (faster prompt
    ///   processing, 4 bytes per weight of memory); without, every product reads the blocks.
    /// - compute: the int8 mode repacks the quantized matrices that are multiplied.
    public init(config c: QwenConfig, source: TensorSource, f32Copies: Bool = true, compute: ComputeMode = .f32) throws {
        /// Matrices only read by row (an embedding table the head does not share) get neither an
        /// f32 copy nor int8 panels.
        func matrix(_ name: String, _ rows: Int, _ cols: Int, multiplied: Bool = true) throws -> WeightMatrix {
            try source.matrix(name, rows: rows, cols: cols, f32Copy: f32Copies && multiplied, compute: multiplied ? compute : .f32)
        }
        func vector(_ name: String, _ n: Int) throws -> FloatBuffer { try source.floats(name, shape: [n]) }

        let h = c.hiddenSize, qw = c.heads * c.headDim, kvw = c.kvHeads * c.headDim
        let tied = c.tieWordEmbeddings || !source.has("lm_head.weight")
        embed = try matrix("model.embed_tokens.weight", c.vocabSize, h, multiplied: tied)
        var layers: [Layer] = []
        for i in 0..<c.layers {
            let p = "model.layers.\(i)."
            layers.append(Layer(
                inputNorm: try vector(p + "input_layernorm.weight", h),
                q: try matrix(p + "self_attn.q_proj.weight", qw, h),
                k: try matrix(p + "self_attn.k_proj.weight", kvw, h),
                v: try matrix(p + "self_attn.v_proj.weight", kvw, h),
                o: try matrix(p + "self_attn.o_proj.weight", h, qw),
                qBias: c.attentionBias ? try vector(p + "self_attn.q_proj.bias", qw) : nil,
                kBias: c.attentionBias ? try vector(p + "self_attn.k_proj.bias", kvw) : nil,
                vBias: c.attentionBias ? try vector(p + "self_attn.v_proj.bias", kvw) : nil,
                qNorm: c.qkNorm ? try vector(p + "self_attn.q_norm.weight", c.headDim) : nil,
                kNorm: c.qkNorm ? try vector(p + "self_attn.k_norm.weight", c.headDim) : nil,
                postNorm: try vector(p + "post_attention_layernorm.weight", h),
                gate: try matrix(p + "mlp.gate_proj.weight", c.intermediateSize, h),
                up: try matrix(p + "mlp.up_proj.weight", c.intermediateSize, h),
                down: try matrix(p + "mlp.down_proj.weight", h, c.intermediateSize)))
        }
        self.layers = layers
        norm = try vector("model.norm.weight", h)
        if tied {
            guard c.tieWordEmbeddings else { throw ModelFileError(source.origin, "missing tensor lm_head.weight") }
            lmHead = embed
        } else {
            lmHead = try matrix("lm_head.weight", c.vocabSize, h)
        }
    }
}

extension QwenWeights {
    private var matrices: [WeightMatrix] {
        var m: [WeightMatrix] = [embed]
        for l in layers { m += [l.q, l.k, l.v, l.o, l.gate, l.up, l.down] }
        if lmHead !== embed { m.append(lmHead) }
        return m
    }

    /// Values in the model (a tied head counted once).
    public var parameterCount: Int {
        matrices.reduce(0) { $0 + $1.rows * $1.cols } + norm.count
            + layers.reduce(0) { $0 + $1.inputNorm.count + $1.postNorm.count + ($1.qBias?.count ?? 0) + ($1.kBias?.count ?? 0) + ($1.vBias?.count ?? 0) }
    }

    /// Bytes the weights take in memory once every page has been read: stored blocks or f32,
    /// plus any f32 copies and int8 panels.
    public var residentBytes: Int {
        matrices.reduce(0) { total, m in
            if let c = m as? CompactMatrix {
                return total + c.storedBytes + (c.hasF32Copy ? c.rows * c.cols * 4 : 0)
                    + (c.computesInt8 ? CompactMatrix.int8Bytes(storageType: c.storageType, rows: c.rows, cols: c.cols) : 0)
            }
            return total + m.rows * m.cols * 4
        }
    }
}
