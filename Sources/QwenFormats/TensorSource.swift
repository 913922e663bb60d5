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
}

extension TensorSource {
    public func has(_ name: String) -> Bool { shape(of: name) != nil }

    /// The tensor, checked to have exactly `shape`.
    public func floats(_ name: String, shape expected: [Int]) throws -> FloatBuffer {
        guard let got = shape(of: name) else { throw ModelFileError(origin, "missing tensor \(name)") }
        guard got == expected else {
            throw ModelFileError(origin, "tensor \(name) has shape \(got), expected \(expected)")
        }
        return try floats(name)
    }
}
