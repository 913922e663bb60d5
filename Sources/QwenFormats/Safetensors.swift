import Foundation
import QwenKernels

/// One `.safetensors` file: an 8-byte little-endian header length, a JSON header, then data.
public final class SafetensorsFile: TensorSource {
    public enum DType: String {
        case f32 = "F32", f16 = "F16", bf16 = "BF16"
        var size: Int { self == .f32 ? 4 : 2 }
    }

    public struct Entry {
        public let dtype: DType
        public let shape: [Int]
        public let offset: Int  // absolute, in the file
        public let length: Int
    }

    public let file: MappedFile
    public private(set) var entries: [String: Entry] = [:]
    public let metadata: [String: String]
    public var origin: String { file.path }

    public init(path: String) throws {
        file = try MappedFile(path: path)
        guard file.count >= 8 else { throw ModelFileError(path, "too short to be a safetensors file (\(file.count) bytes)") }
        let headerLen = Int(truncatingIfNeeded: file.base.loadUnaligned(as: UInt64.self).littleEndian)
        guard headerLen >= 2, headerLen <= file.count - 8 else {
            throw ModelFileError(path, "header length \(headerLen) runs past the end of the file (\(file.count) bytes)")
        }
        let header = Data(bytes: file.base + 8, count: headerLen)
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: header) } catch {
            throw ModelFileError(path, "header is not valid JSON")
        }
        guard let dict = json as? [String: Any] else { throw ModelFileError(path, "header is not a JSON object") }
        let dataStart = 8 + headerLen
        let dataSize = file.count - dataStart
        var meta: [String: String] = [:]
        for (name, value) in dict {
            if name == "__metadata__" {
                if let m = value as? [String: Any] { for (k, v) in m { meta[k] = "\(v)" } }
                continue
            }
            guard let t = value as? [String: Any] else { throw ModelFileError(path, "tensor \(name): entry is not an object") }
            guard let ds = t["dtype"] as? String else { throw ModelFileError(path, "tensor \(name): no dtype") }
            guard let dtype = DType(rawValue: ds) else {
                throw ModelFileError(path, "tensor \(name): unsupported dtype \(ds) (F32, F16 and BF16 are supported)")
            }
            guard let shapeAny = t["shape"] as? [Any], let shape = Self.ints(shapeAny), shape.allSatisfy({ $0 >= 0 }) else {
                throw ModelFileError(path, "tensor \(name): bad shape")
            }
            guard let offAny = t["data_offsets"] as? [Any], let offs = Self.ints(offAny), offs.count == 2,
                  offs[0] >= 0, offs[0] <= offs[1] else {
                throw ModelFileError(path, "tensor \(name): bad data_offsets")
            }
            guard offs[1] <= dataSize else {
                throw ModelFileError(path, "tensor \(name): data runs past the end of the file (offset \(offs[1]) > \(dataSize) data bytes)")
            }
            var elements = 1
            for d in shape {
                let (p, o) = elements.multipliedReportingOverflow(by: d)
                guard !o else { throw ModelFileError(path, "tensor \(name): shape \(shape) overflows") }
                elements = p
            }
            let (bytes, o) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !o, bytes == offs[1] - offs[0] else {
                throw ModelFileError(path, "tensor \(name): \(offs[1] - offs[0]) bytes do not match shape \(shape) of \(ds)")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, offset: dataStart + offs[0], length: offs[1] - offs[0])
        }
        metadata = meta
    }

    private static func ints(_ a: [Any]) -> [Int]? {
        var out: [Int] = []
        for v in a {
            guard let n = v as? NSNumber, Double(n.int64Value) == n.doubleValue else { return nil }
            out.append(Int(n.int64Value))
        }
        return out
    }

    public var tensorNames: [String] { Array(entries.keys) }
    public func shape(of name: String) -> [Int]? { entries[name]?.shape }

    public func compactStorage(_ name: String) -> (Int32, UnsafeRawPointer, AnyObject)? {
        guard let e = entries[name], e.shape.count == 2, (e.shape[1] % 32) == 0 else { return nil }
        switch e.dtype {
        case .bf16: return (30, file.base + e.offset, file)
        case .f16: return (1, file.base + e.offset, file)
        case .f32: return nil
        }
    }

    public func floats(_ name: String) throws -> FloatBuffer {
        guard let e = entries[name] else { throw ModelFileError(origin, "missing tensor \(name)") }
        let n = e.length / e.dtype.size
        let out = FloatBuffer(count: n)
        let src = file.base + e.offset
        switch e.dtype {
        case .f32: HalfFloat.convertF32(src, out.pointer, count: n)
        case .f16: HalfFloat.convertF16(src, out.pointer, count: n)
        case .bf16: HalfFloat.convertBF16(src, out.pointer, count: n)
        }
        return out
    }
}

/// A Hugging Face model directory: one `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`.
public final class SafetensorsDirectory: TensorSource {
    public let origin: String
    private var files: [String: SafetensorsFile] = [:]  // by file name
    private var owner: [String: String] = [:]  // tensor name -> file name

    public init(directory: String) throws {
        origin = directory
        let fm = FileManager.default
        let index = (directory as NSString).appendingPathComponent("model.safetensors.index.json")
        let single = (directory as NSString).appendingPathComponent("model.safetensors")
        if fm.fileExists(atPath: index) {
            guard let obj = try? JSONSerialization.jsonObject(with: SafeFile.read(index, maxBytes: 64 << 20)) as? [String: Any] else {
                throw ModelFileError(index, "not valid JSON")
            }
            guard let map = obj["weight_map"] as? [String: String] else { throw ModelFileError(index, "no weight_map object") }
            for (tensor, fileName) in map {
                guard !fileName.contains("/") else { throw ModelFileError(index, "shard name \(fileName) is not a plain file name") }
                if files[fileName] == nil {
                    files[fileName] = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(fileName))
                }
                guard files[fileName]!.entries[tensor] != nil else {
                    throw ModelFileError(files[fileName]!.origin, "missing tensor \(tensor) that the index places there")
                }
                owner[tensor] = fileName
            }
        } else if fm.fileExists(atPath: single) {
            let f = try SafetensorsFile(path: single)
            files["model.safetensors"] = f
            for name in f.entries.keys { owner[name] = "model.safetensors" }
        } else {
            throw ModelFileError(directory, "no model.safetensors or model.safetensors.index.json")
        }
    }

    public var tensorNames: [String] { Array(owner.keys) }
    public func shape(of name: String) -> [Int]? { owner[name].flatMap { files[$0]?.shape(of: name) } }
    public func compactStorage(_ name: String) -> (Int32, UnsafeRawPointer, AnyObject)? {
        owner[name].flatMap { files[$0]?.compactStorage(name) }
    }
    public func floats(_ name: String) throws -> FloatBuffer {
        guard let f = owner[name].flatMap({ files[$0] }) else { throw ModelFileError(origin, "missing tensor \(name)") }
        return try f.floats(name)
    }
}
