import Foundation
import QwenKernels

/// Writes a `.safetensors` file: the 8-byte header length, the JSON header (padded with
/// spaces to 8 bytes), then each tensor's bytes. Written beside the destination and
/// renamed into place, so a reader never sees half a file.
public enum SafetensorsWriter {
    public enum DType: String, Sendable {
        case f32 = "F32", bf16 = "BF16", f16 = "F16"
        var size: Int { self == .f32 ? 4 : 2 }
    }

    public struct Tensor {
        public let name: String
        public let shape: [Int]
        /// Produces the values when the writer reaches this tensor (so a whole model need not be in memory).
        public let values: () throws -> FloatBuffer
        public init(name: String, shape: [Int], values: @escaping () throws -> FloatBuffer) {
            self.name = name
            self.shape = shape
            self.values = values
        }
    }

    public static func write(_ tensors: [Tensor], dtype: DType, to path: String, metadata: [String: String] = ["format": "pt"]) throws {
        let sorted = tensors.sorted { $0.name < $1.name }
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in sorted {
            let n = t.shape.reduce(1, *) * dtype.size
            header[t.name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + n]] as [String: Any]
            offset += n
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        try AtomicFile.write(to: path) { out in
            var len = UInt64(json.count).littleEndian
            try out.write(contentsOf: Data(bytes: &len, count: 8))
            try out.write(contentsOf: json)
            for t in sorted {
                let v = try t.values()
                guard v.count == t.shape.reduce(1, *) else {
                    throw ModelFileError(path, "tensor \(t.name) has \(v.count) values, not the \(t.shape) its header says")
                }
                try out.write(contentsOf: encode(v, dtype))
            }
        }
    }

    static func encode(_ v: FloatBuffer, _ dtype: DType) -> Data {
        switch dtype {
        case .f32:
            return Data(bytes: v.pointer, count: v.count * 4)
        case .bf16:
            var bits = [UInt16](repeating: 0, count: v.count)
            for i in 0..<v.count { bits[i] = HalfFloat.floatToBF16(v[i]).littleEndian }
            return bits.withUnsafeBytes { Data($0) }
        case .f16:
            var bits = [UInt16](repeating: 0, count: v.count)
            for i in 0..<v.count { bits[i] = Float16(v[i]).bitPattern.littleEndian }
            return bits.withUnsafeBytes { Data($0) }
        }
    }
}

/// Writes a file under a temporary name in the same directory, syncs it, then renames it
/// over `path` and syncs the directory: readers see the old file or the whole new one, never
/// a part, and a failed write (a full disk) leaves the old file as it was.
public enum AtomicFile {
    public static func write(to path: String, _ body: (FileHandle) throws -> Void) throws {
        let dir = (path as NSString).deletingLastPathComponent
        let tmp = (dir.isEmpty ? "." : dir) + "/.\((path as NSString).lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ModelFileError(path, "could not be written (the previous file, if any, is unchanged): \(String(cString: strerror(errno)))")
        }
        do {
            let h = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            do {
                try body(h)
                try h.synchronize()
                try h.close()
            } catch let e as ModelFileError {
                try? h.close()
                throw e
            } catch {
                try? h.close()
                throw ModelFileError(path, "could not be written (the previous file, if any, is unchanged): \(Self.reason(error))")
            }
            guard rename(tmp, path) == 0 else { throw ModelFileError(path, "cannot rename into place: \(String(cString: strerror(errno)))") }
            let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY)
            if dfd >= 0 {
                _ = fsync(dfd)
                close(dfd)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
    }

    /// The system's words for a failed write ("No space left on device"), not Foundation's wrapper.
    static func reason(_ error: Error) -> String {
        let ns = error as NSError
        if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(u.code)))
        }
        if ns.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(ns.code))) }
        return "\(error)"
    }

    public static func write(_ data: Data, to path: String) throws {
        try write(to: path) { try $0.write(contentsOf: data) }
    }
}
