import QwenKernels

/// Merging an adapter into the base weights: W' = W + scale · B · A, in f32.
extension LoRAAdapter {
    /// The merged f32 [out × in] matrix of every projection the adapter touches, by the
    /// Hugging Face tensor name (`model.layers.0.self_attn.q_proj.weight`).
    public func fusedTensors(into weights: QwenWeights) -> [String: FloatBuffer] {
        var out: [String: FloatBuffer] = [:]
        for (l, layer) in weights.layers.enumerated() {
            for p in Projection.allCases {
                guard let u = update(layer: l, p) else { continue }
                out["model.layers.\(l).\(p.module).weight"] = Self.merge(layer.matrix(p), u)
            }
        }
        return out
    }

    static func merge(_ w: WeightMatrix, _ u: LoRAUpdate) -> FloatBuffer {
        let d = FloatBuffer(count: w.rows * w.cols)
        for r in 0..<w.rows { w.copyRow(r, into: d.pointer + r * w.cols) }
        BLAS.sgemm(transA: true, m: w.rows, n: w.cols, k: u.rank, alpha: u.scale, a: u.bt.pointer, lda: w.rows,
                   b: u.a.pointer, ldb: w.cols, beta: 1, c: d.pointer, ldc: w.cols)
        return d
    }
}

extension QwenWeights {
    /// These weights with the adapter merged in (untouched matrices are shared).
    public func merging(_ adapter: LoRAAdapter) -> QwenWeights {
        let merged = layers.enumerated().map { l, layer -> Layer in
            var m = layer
            for p in Projection.allCases {
                guard let u = adapter.update(layer: l, p) else { continue }
                let w = layer.matrix(p)
                m.setMatrix(p, F32Matrix(rows: w.rows, cols: w.cols, data: LoRAAdapter.merge(w, u)))
            }
            return m
        }
        return QwenWeights(embed: embed, layers: merged, norm: norm, lmHead: lmHead)
    }
}

extension QwenWeights.Layer {
    public func matrix(_ p: Projection) -> WeightMatrix {
        switch p {
        case .q: return q
        case .k: return k
        case .v: return v
        case .o: return o
        case .gate: return gate
        case .up: return up
        case .down: return down
        }
    }

    mutating func setMatrix(_ p: Projection, _ m: WeightMatrix) {
        switch p {
        case .q: q = m
        case .k: k = m
        case .v: v = m
        case .o: o = m
        case .gate: gate = m
        case .up: up = m
        case .down: down = m
        }
    }
}
