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

    /// A [rows × cols] weight matrix: compact storage where the file has it, else f32.
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let dense = try floats(name, shape: [rows, cols])
        if let (type, pointer, owner) = compactStorage(name), type != 0 {
            return CompactMatrix(rows: rows, cols: cols, storageType: type, data: pointer, owner: owner, dense: dense)
        }
        return F32Matrix(rows: rows, cols: cols, data: dense)
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
