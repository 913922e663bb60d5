import QwenKernels

/// Where a model's tensors come from, by their Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`). Shapes are PyTorch's, outermost first.
public protocol TensorSource: AnyObject {
    /// The file (or directory) this source reads, for error messages.
    var origin: String { get }
    var tensorNames: [String] { get }
    func shape(of name: String) -> [Int]?
    /// The tensor converted to f32; throws a ModelFileError naming the file on any problem.
    func floats(_ name: String) throws -> FloatBuffer
    /// The tensor's bytes as stored (ggml type number, pointer, object keeping it alive),
    /// when the file holds it in a form the compact kernels read.
    func compactStorage(_ name: String) -> (Int32, UnsafeRawPointer, AnyObject)?
}

extension TensorSource {
    public func has(_ name: String) -> Bool { shape(of: name) != nil }

    /// A [rows × cols] weight matrix: compact storage where the file has it (with an f32
    /// copy unless `f32Copy` is false, or the int8 mode repacks it), else f32.
    public func matrix(_ name: String, rows: Int, cols: Int, f32Copy: Bool = true, compute: ComputeMode = .f32) throws -> WeightMatrix {
        if let (type, pointer, owner) = compactStorage(name), type != 0 {
            guard let got = shape(of: name), got == [rows, cols] else {
                throw ModelFileError(origin, "tensor \(name) has shape \(shape(of: name) ?? []), expected \([rows, cols])")
            }
            // In the int8 mode every compact matrix runs its kernel at every row count (float ones
            // the compact f32 kernel), so no f32 copy is kept (see CompactMatrix.rowExact).
            let int8 = compute == .int8 && CompactMatrix.int8Packs(storageType: type, cols: cols)
            let dense = f32Copy && compute != .int8 ? try floats(name) : nil
            return CompactMatrix(rows: rows, cols: cols, storageType: type, data: pointer, owner: owner, dense: dense, int8: int8,
                                 rowExact: compute == .int8 && !int8)
        }
        return F32Matrix(rows: rows, cols: cols, data: try floats(name, shape: [rows, cols]))
    }

    /// Bytes that f32 copies of the compact 2-D tensors would take (none in the int8 mode).
    public func f32CopyBytes(compute: ComputeMode = .f32) -> Int {
        tensorNames.reduce(0) { sum, name in
            guard let s = shape(of: name), s.count == 2, let c = compactStorage(name), c.0 != 0 else { return sum }
            if compute == .int8 { return sum }
            return sum + s[0] * s[1] * 4
        }
    }

    /// Bytes the int8 mode's repacked panels would take: 0.6–1.25 per weight (by type) of every
    /// quantized matrix that is multiplied (the embedding table only when the head shares it).
    public var int8PanelBytes: Int {
        let tied = !has("lm_head.weight")
        return tensorNames.reduce(0) { sum, name in
            guard let s = shape(of: name), s.count == 2, let c = compactStorage(name),
                  CompactMatrix.int8Packs(storageType: c.0, cols: s[1]),
                  tied || name != "model.embed_tokens.weight" else { return sum }
            return sum + CompactMatrix.int8Bytes(storageType: c.0, rows: s[0], cols: s[1])
        }
    }

    /// The tensor, checked to have exactly `shape`.
    public func floats(_ name: String, shape expected: [Int]) throws -> FloatBuffer {
        guard let got = shape(of: name) else { throw ModelFileError(origin, "missing tensor \(name)") }
        guard got == expected else {
            throw ModelFileError(origin, "tensor \(name) has shape \(got), expected \(expected)")
        }
        return try floats(name)
    }
}
