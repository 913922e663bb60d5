import Foundation
import QwenKernels

/// Rewrites a GGUF file with some tensors replaced by f32 values (a merged adapter): the
/// metadata (vocabulary, chat template, …) is copied byte for byte, other tensors keep
/// their stored blocks. Written atomically.
public enum GGUFWriter {
    /// - replacing: Hugging Face tensor name → new values, same shape as before.
    public static func rewrite(_ src: GGUFFile, replacing: [String: FloatBuffer], to path: String) throws {
        for (name, v) in replacing {
            guard let t = src.tensors[name] else { throw ModelFileError(src.origin, "no tensor \(name) to replace") }
            guard t.elementCount == v.count else { throw ModelFileError(src.origin, "tensor \(name): \(v.count) values for \(t.dims)") }
        }
        var head = Data()
        func u32(_ v: UInt32) { var x = v.littleEndian; head.append(Data(bytes: &x, count: 4)) }
        func u64(_ v: UInt64) { var x = v.littleEndian; head.append(Data(bytes: &x, count: 8)) }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); head.append(contentsOf: Array(s.utf8)) }
        let align = src.alignment
        func padded(_ n: Int) -> Int { (n + align - 1) / align * align }

        u32(0x4655_4747)
        u32(UInt32(src.version))
        u64(UInt64(src.tensorOrder.count))
        u64(UInt64(src.metadataCount))
        head.append(Data(bytes: src.file.base + src.metadataBytes.lowerBound, count: src.metadataBytes.count))
        var offset = 0
        for name in src.tensorOrder {
            let t = src.tensors[name]!
            let replaced = replacing[name] != nil
            str(t.ggufName)
            u32(UInt32(t.dims.count))
            for d in t.dims { u64(UInt64(d)) }
            u32(replaced ? 0 : UInt32(t.type.rawValue))
            u64(UInt64(offset))
            offset = padded(offset + (replaced ? t.elementCount * 4 : t.byteCount))
        }
        let zeros = Data(count: align)
        try AtomicFile.write(to: path) { out in
            try out.write(contentsOf: head)
            try out.write(contentsOf: zeros.prefix(padded(head.count) - head.count))
            for name in src.tensorOrder {
                let t = src.tensors[name]!
                let n: Int
                if let v = replacing[name] {
                    n = v.count * 4
                    try out.write(contentsOf: Data(bytes: v.pointer, count: n))
                } else {
                    n = t.byteCount
                    try out.write(contentsOf: Data(bytes: src.file.base + t.offset, count: n))
                }
                try out.write(contentsOf: zeros.prefix(padded(n) - n))
            }
        }
    }
}
