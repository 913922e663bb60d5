import QwenKernels

/// A GGUF file (versions 2 and 3): metadata, tensor table and aligned tensor data.
/// Tensors are exposed by their Hugging Face names so that the model code is the same
/// for both formats; `ggufName` keeps the original.
public final class GGUFFile: TensorSource {
    public enum Value: Equatable {
        case uint(UInt64), int(Int64), float(Double), bool(Bool), string(String)
        case array([Value])

        public var int: Int? {
            switch self {
            case .uint(let v): return v <= UInt64(Int.max) ? Int(v) : nil
            case .int(let v): return Int(v)
            default: return nil
            }
        }
        public var double: Double? {
            switch self {
            case .float(let v): return v
            case .uint(let v): return Double(v)
            case .int(let v): return Double(v)
            default: return nil
            }
        }
        public var string: String? { if case .string(let s) = self { return s } else { return nil } }
        public var bool: Bool? { if case .bool(let b) = self { return b } else { return nil } }
        public var array: [Value]? { if case .array(let a) = self { return a } else { return nil } }
    }

    public struct TensorInfo {
        public let ggufName: String
        public let type: GGMLType
        /// GGUF order: dims[0] is the innermost (contiguous) dimension.
        public let dims: [Int]
        public let offset: Int  // absolute, in the file
        public let byteCount: Int
        public var elementCount: Int { dims.reduce(1, *) }
    }

    public let file: MappedFile
    public let version: Int
    public private(set) var metadata: [String: Value] = [:]
    public private(set) var tensors: [String: TensorInfo] = [:]  // by Hugging Face name
    /// The metadata section's bytes in the file, its entry count, the tensors' Hugging
    /// Face names in file order, and the data alignment: what a rewrite copies.
    public private(set) var metadataBytes: Range<Int> = 0..<0
    public private(set) var metadataCount = 0
    public private(set) var tensorOrder: [String] = []
    public private(set) var alignment = 32
    /// Each metadata entry's key, in file order, with the bytes of its type and value as stored
    /// (what a writer copies without knowing the key).
    public private(set) var storedMetadata: [(key: String, type: UInt32, value: Range<Int>)] = []
    public var origin: String { file.path }

    public init(path: String) throws {
        file = try MappedFile(path: path)
        var r = Reader(file: file)
        let magic = try r.u32("magic")
        guard magic == 0x4655_4747 else { throw ModelFileError(path, "not a GGUF file (bad magic)") }
        let v = try r.u32("version")
        guard v == 2 || v == 3 else { throw ModelFileError(path, "unsupported GGUF version \(v) (2 and 3 are supported)") }
        version = Int(v)
        let tensorCount = try r.count("tensor count", max: 1 << 20)
        let kvCount = try r.count("metadata count", max: 1 << 20)
        metadataCount = kvCount
        let metaStart = r.offset
        for _ in 0..<kvCount {
            let key = try r.string("metadata key")
            let type = try r.u32("type of \(key)")
            let valueStart = r.offset
            metadata[key] = try r.value(type: type, key: key, depth: 0)
            storedMetadata.append((key, type, valueStart..<r.offset))
        }
        metadataBytes = metaStart..<r.offset
        var infos: [(String, GGMLType, [Int], Int)] = []
        for i in 0..<tensorCount {
            let name = try r.string("name of tensor \(i)")
            let nd = try r.u32("dimensions of \(name)")
            guard nd >= 1, nd <= 4 else { throw ModelFileError(path, "tensor \(name): \(nd) dimensions") }
            var dims: [Int] = []
            for _ in 0..<nd { dims.append(try r.count("dimension of \(name)", max: 1 << 40)) }
            let rawType = try r.u32("type of \(name)")
            guard let type = GGMLType(rawValue: rawType) else {
                throw ModelFileError(path, "tensor \(name): unknown tensor type \(rawType)")
            }
            let off = try r.count("offset of \(name)", max: Int(Int32.max) * 1024)
            infos.append((name, type, dims, off))
        }
        if let a = metadata["general.alignment"] {
            guard let ai = a.int, ai > 0, ai & (ai - 1) == 0 else { throw ModelFileError(path, "general.alignment is not a power of two") }
            alignment = ai
        }
        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        for (name, type, dims, off) in infos {
            var n = 1
            for d in dims {
                let (p, o) = n.multipliedReportingOverflow(by: d)
                guard !o else { throw ModelFileError(path, "tensor \(name): shape overflows") }
                n = p
            }
            guard n % type.blockSize == 0, dims[0] % type.blockSize == 0 else {
                throw ModelFileError(path, "tensor \(name): row of \(dims[0]) is not a whole number of \(type) blocks")
            }
            let (bytes, o) = (n / type.blockSize).multipliedReportingOverflow(by: type.blockBytes)
            guard !o else { throw ModelFileError(path, "tensor \(name): byte count of shape \(dims) overflows") }
            _ = try file.slice(dataStart + off, bytes, what: "data of tensor \(name)")
            let hf = Self.huggingFaceName(name)
            tensorOrder.append(hf)
            tensors[hf] = TensorInfo(ggufName: name, type: type, dims: dims, offset: dataStart + off, byteCount: bytes)
        }
    }

    public var architecture: String? { metadata["general.architecture"]?.string }

    /// llama.cpp's names of a layer's modules → the Hugging Face names of the same weights.
    static let layerModules: [String: String] = [
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    ]
    static let topLevel = ["token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                           "output.weight": "lm_head.weight"]

    /// Maps llama.cpp's tensor names to the Hugging Face names of the same weights.
    public static func huggingFaceName(_ g: String) -> String {
        if let hf = topLevel[g] { return hf }
        let parts = g.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blk", Int(parts[1]) != nil else { return g }
        let rest = parts[2]
        guard let dot = rest.lastIndex(of: ".") else { return g }
        let module = String(rest[..<dot]), suffix = String(rest[dot...])
        guard let hf = layerModules[module] else { return g }
        return "model.layers.\(parts[1]).\(hf)\(suffix)"
    }

    /// The inverse: llama.cpp's name for a Hugging Face tensor name, nil for one it has none for.
    public static func ggufName(_ hf: String) -> String? {
        if let g = topLevel.first(where: { $0.value == hf })?.key { return g }
        let prefix = "model.layers."
        guard hf.hasPrefix(prefix) else { return nil }
        let rest = hf.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0 else { return nil }
        let tail = rest[rest.index(after: dot)...]
        guard let suffixDot = tail.lastIndex(of: ".") else { return nil }
        let module = String(tail[..<suffixDot]), suffix = tail[suffixDot...]
        guard let g = layerModules.first(where: { $0.value == module })?.key else { return nil }
        return "blk.\(layer).\(g)\(suffix)"
    }

    public var tensorNames: [String] { Array(tensors.keys) }

    public func shape(of name: String) -> [Int]? {
        guard let t = tensors[name] else { return nil }
        return t.dims.reversed()
    }

    public func compactStorage(_ name: String) -> (Int32, UnsafeRawPointer, AnyObject)? {
        guard let t = tensors[name], t.dims.count == 2 else { return nil }
        return (Int32(t.type.rawValue), file.base + t.offset, file)
    }

    public func floats(_ name: String) throws -> FloatBuffer {
        guard let t = tensors[name] else { throw ModelFileError(origin, "missing tensor \(name)") }
        let out = FloatBuffer(count: t.elementCount)
        GGMLDequant.dequantize(type: t.type, src: file.base + t.offset, dst: out.pointer, count: t.elementCount)
        return out
    }

    private struct Reader {
        let file: MappedFile
        var offset = 0

        mutating func bytes(_ n: Int, _ what: String) throws -> UnsafeRawBufferPointer {
            let s = try file.slice(offset, n, what: what)
            offset += n
            return s
        }
        mutating func u32(_ what: String) throws -> UInt32 { try bytes(4, what).loadUnaligned(as: UInt32.self).littleEndian }
        mutating func u64(_ what: String) throws -> UInt64 { try bytes(8, what).loadUnaligned(as: UInt64.self).littleEndian }
        mutating func count(_ what: String, max: Int) throws -> Int {
            let v = try u64(what)
            guard v <= UInt64(max) else { throw ModelFileError(file.path, "\(what) is \(v), which is not plausible") }
            return Int(v)
        }
        mutating func string(_ what: String) throws -> String {
            let n = try count("length of \(what)", max: file.count)
            let b = try bytes(n, what)
            return String(decoding: b, as: UTF8.self)
        }
        mutating func value(type: UInt32, key: String, depth: Int) throws -> Value {
            switch type {
            case 0: return .uint(UInt64(try bytes(1, key)[0]))
            case 1: return .int(Int64(Int8(bitPattern: try bytes(1, key)[0])))
            case 2: return .uint(UInt64(try bytes(2, key).loadUnaligned(as: UInt16.self).littleEndian))
            case 3: return .int(Int64(try bytes(2, key).loadUnaligned(as: Int16.self).littleEndian))
            case 4: return .uint(UInt64(try u32(key)))
            case 5: return .int(Int64(Int32(bitPattern: try u32(key))))
            case 6: return .float(Double(Float(bitPattern: try u32(key))))
            case 7: return .bool(try bytes(1, key)[0] != 0)
            case 8: return .string(try string(key))
            case 9:
                guard depth < 4 else { throw ModelFileError(file.path, "metadata \(key): arrays nested too deeply") }
                let et = try u32("element type of \(key)")
                let n = try count("length of \(key)", max: file.count)
                var out: [Value] = []
                out.reserveCapacity(n)
                for _ in 0..<n { out.append(try value(type: et, key: key, depth: depth + 1)) }
                return .array(out)
            case 10: return .uint(try u64(key))
            case 11: return .int(Int64(bitPattern: try u64(key)))
            case 12: return .float(Double(bitPattern: try u64(key)))
            default: throw ModelFileError(file.path, "metadata \(key): unknown value type \(type)")
            }
        }
    }
}
