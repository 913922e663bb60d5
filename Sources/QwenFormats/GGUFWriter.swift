import Foundation
import QwenKernels

/// Writes GGUF files (version 3): a new file from typed metadata and tensors produced one at
/// a time, or a rewrite of an existing file with some tensors replaced. Written atomically.
public enum GGUFWriter {
    /// A metadata value with the exact GGUF type llama.cpp's loader checks for its key.
    public enum Value {
        case u32(UInt32), i32(Int32), f32(Float), bool(Bool), string(String)
        case strings([String]), i32s([Int32])
        /// A value copied from another file: its GGUF type number and bytes as stored there.
        case stored(type: UInt32, bytes: UnsafeRawBufferPointer)
    }

    /// A tensor to write: its GGUF name, ggml type, dims in GGUF order (innermost first),
    /// byte size, and the bytes themselves, asked for only when it is its turn (so a file
    /// larger than memory can be written one tensor at a time). The closure returns the
    /// bytes and an object keeping them alive while they are written.
    public struct Tensor {
        public let name: String
        public let type: UInt32
        public let dims: [Int]
        public let byteCount: Int
        public let bytes: () throws -> (UnsafeRawBufferPointer, AnyObject)

        public init(name: String, type: UInt32, dims: [Int], byteCount: Int,
                    bytes: @escaping () throws -> (UnsafeRawBufferPointer, AnyObject)) {
            self.name = name
            self.type = type
            self.dims = dims
            self.byteCount = byteCount
            self.bytes = bytes
        }
    }

    /// Writes a new GGUF with `metadata` (in this order) and `tensors`, aligned to 32 bytes.
    public static func write(metadata: [(String, Value)], tensors: [Tensor], to path: String) throws {
        var head = Head()
        head.u32(0x4655_4747)
        head.u32(3)
        head.u64(UInt64(tensors.count))
        head.u64(UInt64(metadata.count))
        for (key, value) in metadata {
            head.str(key)
            switch value {
            case .u32(let v): head.u32(4); head.u32(v)
            case .i32(let v): head.u32(5); head.u32(UInt32(bitPattern: v))
            case .f32(let v): head.u32(6); head.u32(v.bitPattern)
            case .bool(let v): head.u32(7); head.data.append(v ? 1 : 0)
            case .string(let s): head.u32(8); head.str(s)
            case .strings(let a): head.u32(9); head.u32(8); head.u64(UInt64(a.count)); a.forEach { head.str($0) }
            case .i32s(let a): head.u32(9); head.u32(5); head.u64(UInt64(a.count)); a.forEach { head.u32(UInt32(bitPattern: $0)) }
            case .stored(let type, let bytes): head.u32(type); head.data.append(contentsOf: bytes)
            }
        }
        try emit(head, tensors, alignment: 32, to: path)
    }

    /// Rewrites a GGUF file with some tensors replaced by f32 values (a merged adapter): the
    /// metadata (vocabulary, chat template, …) is copied byte for byte, other tensors keep
    /// their stored blocks.
    /// - replacing: Hugging Face tensor name → new values, same shape as before.
    public static func rewrite(_ src: GGUFFile, replacing: [String: FloatBuffer], to path: String) throws {
        for (name, v) in replacing {
            guard let t = src.tensors[name] else { throw ModelFileError(src.origin, "no tensor \(name) to replace") }
            guard t.elementCount == v.count else { throw ModelFileError(src.origin, "tensor \(name): \(v.count) values for \(t.dims)") }
        }
        var head = Head()
        head.u32(0x4655_4747)
        head.u32(UInt32(src.version))
        head.u64(UInt64(src.tensorOrder.count))
        head.u64(UInt64(src.metadataCount))
        head.data.append(Data(bytes: src.file.base + src.metadataBytes.lowerBound, count: src.metadataBytes.count))
        let tensors = src.tensorOrder.map { name -> Tensor in
            let t = src.tensors[name]!
            if let v = replacing[name] {
                return Tensor(name: t.ggufName, type: 0, dims: t.dims, byteCount: v.count * 4) {
                    (UnsafeRawBufferPointer(start: v.pointer, count: v.count * 4), v)
                }
            }
            return Tensor(name: t.ggufName, type: t.type.rawValue, dims: t.dims, byteCount: t.byteCount) {
                (UnsafeRawBufferPointer(start: src.file.base + t.offset, count: t.byteCount), src.file)
            }
        }
        try emit(head, tensors, alignment: src.alignment, to: path)
    }

    struct Head {
        var data = Data()
        mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
        mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); data.append(contentsOf: Array(s.utf8)) }
    }

    /// Appends the tensor infos to `head`, then writes head, padding and each tensor's bytes,
    /// every data offset a multiple of `alignment`. Offsets are overflow-checked.
    static func emit(_ head: Head, _ tensors: [Tensor], alignment: Int, to path: String) throws {
        var head = head
        func padded(_ n: Int) throws -> Int {
            let (s, o) = n.addingReportingOverflow(alignment - 1)
            guard !o else { throw ModelFileError(path, "the tensors' total size overflows") }
            return s / alignment * alignment
        }
        var offset = 0
        for t in tensors {
            head.str(t.name)
            head.u32(UInt32(t.dims.count))
            for d in t.dims { head.u64(UInt64(d)) }
            head.u32(t.type)
            head.u64(UInt64(offset))
            let (end, o) = offset.addingReportingOverflow(t.byteCount)
            guard !o, t.byteCount >= 0 else { throw ModelFileError(path, "the tensors' total size overflows") }
            offset = try padded(end)
        }
        let zeros = Data(count: alignment)
        try AtomicFile.write(to: path) { out in
            try out.write(contentsOf: head.data)
            try out.write(contentsOf: zeros.prefix(try padded(head.data.count) - head.data.count))
            for t in tensors {
                let (buffer, owner) = try t.bytes()
                guard buffer.count == t.byteCount else {
                    throw ModelFileError(path, "tensor \(t.name) produced \(buffer.count) bytes, expected \(t.byteCount)")
                }
                try withExtendedLifetime(owner) {
                    try out.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!),
                                                   count: buffer.count, deallocator: .none))
                }
                try out.write(contentsOf: zeros.prefix(try padded(t.byteCount) - t.byteCount))
            }
        }
    }
}
