import QwenKernels

/// Block dequantization for ggml's tensor types, following the reference C definitions
/// (the same float operations in the same order, so results match gguf-py bit for bit).
public enum GGMLDequant {
    public static func dequantize(type: GGMLType, src: UnsafeRawPointer, dst: UnsafeMutablePointer<Float>, count: Int) {
        let blocks = count / type.blockSize
        switch type {
        case .f32: HalfFloat.convertF32(src, dst, count: count)
        case .f16: HalfFloat.convertF16(src, dst, count: count)
        case .bf16: HalfFloat.convertBF16(src, dst, count: count)
        case .q4_0: for b in 0..<blocks { q4_0(src + b * 18, dst + b * 32) }
        case .q4_1: for b in 0..<blocks { q4_1(src + b * 20, dst + b * 32) }
        case .q5_0: for b in 0..<blocks { q5_0(src + b * 22, dst + b * 32) }
        case .q5_1: for b in 0..<blocks { q5_1(src + b * 24, dst + b * 32) }
        case .q8_0: for b in 0..<blocks { q8_0(src + b * 34, dst + b * 32) }
        case .q4_K: for b in 0..<blocks { q4_K(src + b * 144, dst + b * 256) }
        case .q5_K: for b in 0..<blocks { q5_K(src + b * 176, dst + b * 256) }
        case .q6_K: for b in 0..<blocks { q6_K(src + b * 210, dst + b * 256) }
        }
    }

    @inline(__always) static func f16(_ p: UnsafeRawPointer, _ off: Int) -> Float {
        HalfFloat.f16ToFloat(p.loadUnaligned(fromByteOffset: off, as: UInt16.self))
    }
    @inline(__always) static func u8(_ p: UnsafeRawPointer, _ off: Int) -> UInt8 { p.load(fromByteOffset: off, as: UInt8.self) }

    // Q4_0: d (f16), 16 bytes of nibbles; x = (q - 8) * d.
    static func q4_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0)
        for j in 0..<16 {
            let q = u8(b, 2 + j)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }

    // Q4_1: d, m (f16), 16 bytes of nibbles; x = q * d + m.
    static func q4_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0), m = f16(b, 2)
        for j in 0..<16 {
            let q = u8(b, 4 + j)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    // Q5_0: d, 32 high bits, 16 bytes of nibbles; x = (q5 - 16) * d.
    static func q5_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0)
        let qh = b.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
        for j in 0..<16 {
            let q = u8(b, 6 + j)
            let h0 = Int((qh >> UInt32(j)) << 4) & 0x10
            let h1 = Int(qh >> UInt32(j + 12)) & 0x10
            y[j] = Float((Int(q & 0x0F) | h0) - 16) * d
            y[j + 16] = Float((Int(q >> 4) | h1) - 16) * d
        }
    }

    // Q5_1: d, m, 32 high bits, nibbles; x = q5 * d + m.
    static func q5_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0), m = f16(b, 2)
        let qh = b.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        for j in 0..<16 {
            let q = u8(b, 8 + j)
            let h0 = Int((qh >> UInt32(j)) << 4) & 0x10
            let h1 = Int(qh >> UInt32(j + 12)) & 0x10
            y[j] = Float(Int(q & 0x0F) | h0) * d + m
            y[j + 16] = Float(Int(q >> 4) | h1) * d + m
        }
    }

    // Q8_0: d, 32 signed bytes; x = q * d.
    static func q8_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0)
        for j in 0..<32 { y[j] = Float(Int8(bitPattern: u8(b, 2 + j))) * d }
    }

    /// The 6-bit scale and min of sub-block j in the 12 packed bytes of a Q4_K/Q5_K block.
    @inline(__always) static func scaleMin(_ j: Int, _ q: UnsafeRawPointer) -> (Float, Float) {
        if j < 4 {
            return (Float(u8(q, j) & 63), Float(u8(q, j + 4) & 63))
        }
        let sc = (u8(q, j + 4) & 0x0F) | ((u8(q, j - 4) >> 6) << 4)
        let m = (u8(q, j + 4) >> 4) | ((u8(q, j) >> 6) << 4)
        return (Float(sc), Float(m))
    }

    // Q4_K: d, dmin, 12 bytes of scales, 128 bytes of nibbles; 8 sub-blocks of 32.
    static func q4_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0), dmin = f16(b, 2)
        let scales = b + 4
        var q = b + 16
        var out = y
        for pair in 0..<4 {
            let (sc1, m1) = scaleMin(2 * pair, scales)
            let (sc2, m2) = scaleMin(2 * pair + 1, scales)
            let d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2
            for l in 0..<32 { out[l] = d1 * Float(u8(q, l) & 0x0F) - mm1 }
            for l in 0..<32 { out[32 + l] = d2 * Float(u8(q, l) >> 4) - mm2 }
            q += 32
            out += 64
        }
    }

    // Q5_K: d, dmin, 12 bytes of scales, 32 bytes of high bits, 128 bytes of nibbles.
    static func q5_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 0), dmin = f16(b, 2)
        let scales = b + 4, qh = b + 16
        var ql = b + 48
        var out = y
        var u1: UInt8 = 1, u2: UInt8 = 2
        for pair in 0..<4 {
            let (sc1, m1) = scaleMin(2 * pair, scales)
            let (sc2, m2) = scaleMin(2 * pair + 1, scales)
            let d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2
            for l in 0..<32 {
                let h: UInt8 = (u8(qh, l) & u1) != 0 ? 16 : 0
                out[l] = d1 * Float((u8(ql, l) & 0x0F) + h) - mm1
            }
            for l in 0..<32 {
                let h: UInt8 = (u8(qh, l) & u2) != 0 ? 16 : 0
                out[32 + l] = d2 * Float((u8(ql, l) >> 4) + h) - mm2
            }
            ql += 32
            out += 64
            u1 <<= 2
            u2 <<= 2
        }
    }

    // Q6_K: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 signed scales, d.
    static func q6_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = f16(b, 208)
        var ql = b, qh = b + 128, sc = b + 192
        var out = y
        for _ in 0..<2 {
            for l in 0..<32 {
                let iS = l / 16
                let h = Int(u8(qh, l))
                let q1 = (Int(u8(ql, l) & 0x0F) | ((h >> 0) & 3) << 4) - 32
                let q2 = (Int(u8(ql, l + 32) & 0x0F) | ((h >> 2) & 3) << 4) - 32
                let q3 = (Int(u8(ql, l) >> 4) | ((h >> 4) & 3) << 4) - 32
                let q4 = (Int(u8(ql, l + 32) >> 4) | ((h >> 6) & 3) << 4) - 32
                let s = { (k: Int) -> Float in Float(Int8(bitPattern: u8(sc, iS + k))) }
                out[l] = d * s(0) * Float(q1)
                out[l + 32] = d * s(2) * Float(q2)
                out[l + 64] = d * s(4) * Float(q3)
                out[l + 96] = d * s(6) * Float(q4)
            }
            out += 128
            ql += 64
            qh += 32
            sc += 8
        }
    }
}
