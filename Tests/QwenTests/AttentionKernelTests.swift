import CQwenKernels
import Foundation
import QwenRuntime
import XCTest

/// The paged attention kernel against attention written out plainly in double precision:
/// head widths, group sizes and context lengths around the 16-key tiles, on block tables
/// that scatter a sequence over the pool.
final class AttentionKernelTests: XCTestCase {
    func testPagedAttentionMatchesPlainAttention() {
        forEachCPULevel { level in
            var rng = SeededRandom(seed: 21)
            let blockSize = 16, poolBlocks = 24
            for (heads, kvHeads, hd) in [(14, 2, 64), (16, 8, 128), (2, 2, 16), (4, 1, 32)] {
                let kvw = kvHeads * hd
                let keys = (0..<(poolBlocks * blockSize * kvw)).map { _ in Float(rng.unit() * 2 - 1) }
                let values = (0..<(poolBlocks * blockSize * kvw)).map { _ in Float(rng.unit() * 2 - 1) }
                let table: [Int32] = (0..<poolBlocks).map { Int32($0) }.shuffled(using: &rng)
                for ctx in [1, 15, 16, 17, 40, 100, 300] {
                    let q = (0..<(heads * hd)).map { _ in Float(rng.unit() * 4 - 2) }
                    let scale = 1 / Float(hd).squareRoot()
                    var out = [Float](repeating: .nan, count: heads * hd)
                    var scratch = [Float](repeating: 0, count: (heads / kvHeads) * ctx)
                    qwen_attend_paged(q, Int32(heads), Int32(kvHeads), Int32(hd), keys, values, table, Int32(blockSize), Int32(ctx),
                                      scale, &out, &scratch)
                    // One kv head at a time (how a decoding row is spread over threads): the same values.
                    var parts = [Float](repeating: .nan, count: heads * hd)
                    for g in 0..<kvHeads {
                        qwen_attend_paged_groups(q, Int32(heads), Int32(kvHeads), Int32(hd), keys, values, table, Int32(blockSize), Int32(ctx),
                                                 scale, &parts, &scratch, Int32(g), Int32(g + 1))
                    }
                    XCTAssertEqual(parts, out)
                    func row(_ t: Int) -> Int { (Int(table[t / blockSize]) * blockSize + t % blockSize) * kvw }
                    for h in 0..<heads {
                        let g = h / (heads / kvHeads)
                        let scores = (0..<ctx).map { t in
                            (0..<hd).reduce(0.0) { $0 + Double(q[h * hd + $1]) * Double(keys[row(t) + g * hd + $1]) } * Double(scale)
                        }
                        let m = scores.max()!
                        let e = scores.map { Foundation.exp($0 - m) }
                        let sum = e.reduce(0, +)
                        for i in 0..<hd {
                            let want = (0..<ctx).reduce(0.0) { $0 + e[$1] / sum * Double(values[row($1) + g * hd + i]) }
                            XCTAssertEqual(Double(out[h * hd + i]), want, accuracy: 2e-5, "\(level) heads \(heads)/\(kvHeads) hd \(hd) ctx \(ctx) head \(h) [\(i)]")
                        }
                    }
                }
            }
        }
    }

    /// Half-float rounding: the vector and scalar conversions both give Swift's Float16
    /// (round to nearest even), subnormals, overflow and signs included.
    func testHalfFloatRounding() {
        forEachCPULevel { level in
            var rng = SeededRandom(seed: 3)
            var xs: [Float] = [0, -0, 1, -1, 65504, 65520, 70000, -70000, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9, .infinity, -.infinity,
                               1.0009765625, 1.00048828125, 1.0014648438]
            for _ in 0..<5000 { xs.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) ) }
            xs = xs.filter { !$0.isNaN }
            for n in [xs.count, 7] {  // the vector path and the scalar tail
                var out = [UInt16](repeating: 0, count: n)
                qwen_f32_to_f16(xs, &out, Int32(n))
                for i in 0..<n { XCTAssertEqual(out[i], Float16(xs[i]).bitPattern, "\(xs[i])") }
            }
        }
    }

    /// Attention over a half-float cache equals attention over the same values, rounded, in f32.
    func testHalfFloatCacheMatchesRoundedValues() {
        forEachCPULevel { level in
            var rng = SeededRandom(seed: 8)
            let blockSize = 16, poolBlocks = 12
            for (heads, kvHeads, hd) in [(14, 2, 64), (4, 1, 32), (2, 2, 24)] {
                let n = poolBlocks * blockSize * kvHeads * hd
                let keys = (0..<n).map { _ in Float(rng.unit() * 2 - 1) }, values = (0..<n).map { _ in Float(rng.unit() * 2 - 1) }
                var kh = [UInt16](repeating: 0, count: n), vh = [UInt16](repeating: 0, count: n)
                qwen_f32_to_f16(keys, &kh, Int32(n))
                qwen_f32_to_f16(values, &vh, Int32(n))
                let kr = kh.map { Float(Float16(bitPattern: $0)) }, vr = vh.map { Float(Float16(bitPattern: $0)) }
                assertAttendsAsValues(kind: Int32(QWEN_KV_F16), stored: (bytes(kh), bytes(vh)), values: (kr, vr), heads: heads, kvHeads: kvHeads,
                                      hd: hd, blockSize: blockSize, poolBlocks: poolBlocks, rng: &rng)
            }
        }
    }

    func bytes<T>(_ a: [T]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }

    /// Attention over a cache stored as `kind` equals attention over the values it stands for, in
    /// f32, at contexts inside and across pages (shuffled).
    func assertAttendsAsValues(kind: Int32, stored: ([UInt8], [UInt8]), values: ([Float], [Float]), heads: Int, kvHeads: Int, hd: Int,
                               blockSize: Int, poolBlocks: Int, rng: inout SeededRandom) {
        let table: [Int32] = (0..<poolBlocks).map { Int32($0) }.shuffled(using: &rng)
        for ctx in [1, 16, 33, 150] {
            let q = (0..<(heads * hd)).map { _ in Float(rng.unit() * 4 - 2) }
            var want = [Float](repeating: 0, count: heads * hd), got = want
            var scratch = [Float](repeating: 0, count: (heads / kvHeads) * ctx)
            let scale = 1 / Float(hd).squareRoot()
            qwen_attend_paged_kv(q, Int32(heads), Int32(kvHeads), Int32(hd), values.0, values.1, table, Int32(blockSize), Int32(ctx), scale,
                                 &want, &scratch, 0, Int32(kvHeads), Int32(QWEN_KV_F32))
            qwen_attend_paged_kv(q, Int32(heads), Int32(kvHeads), Int32(hd), stored.0, stored.1, table, Int32(blockSize), Int32(ctx), scale,
                                 &got, &scratch, 0, Int32(kvHeads), kind)
            for i in 0..<got.count { XCTAssertEqual(got[i], want[i], accuracy: 1e-5, "kind \(kind) heads \(heads)/\(kvHeads) hd \(hd) ctx \(ctx)") }
        }
    }

    /// `x` (rows of `hd`-wide heads) as a Q8_0 cache — each head ggml's quantize_row_q8_0 of its
    /// values padded to 32 — and, in the f32 layout, the values those bytes stand for.
    func q8Cache(_ x: [Float], hd: Int) -> (bytes: [UInt8], values: [Float]) {
        let padded = (hd + 31) / 32 * 32, per = padded / 32 * 34, heads = x.count / hd
        var bytes = [UInt8](repeating: 0, count: heads * per), back = [Float](repeating: 0, count: x.count)
        for h in 0..<heads {
            var head = Array(x[(h * hd)..<((h + 1) * hd)]) + [Float](repeating: 0, count: padded - hd)
            var block = [UInt8](repeating: 0, count: per), out = [Float](repeating: 0, count: padded)
            XCTAssertEqual(qwen_quantize_rows(Int32(QWEN_Q8_0), &head, 1, Int32(padded), &block), per)
            qwen_dequant_row(Int32(QWEN_Q8_0), block, Int32(padded), &out)
            bytes.replaceSubrange((h * per)..<((h + 1) * per), with: block)
            back.replaceSubrange((h * hd)..<((h + 1) * hd), with: out.prefix(hd))
        }
        return (bytes, back)
    }

    /// Attention over a Q8_0 cache equals attention over the dequantized values in f32, on the
    /// AVX-512 path (hd 64, 32, 48) and the portable one (hd 24, and 288 past its 256 limit);
    /// each head of each row is ggml's quantize_row_q8_0 of its values padded to 32.
    func testQ8CacheMatchesDequantizedValues() {
        forEachCPULevel { level in
            var rng = SeededRandom(seed: 9)
            let blockSize = 16, poolBlocks = 10
            for (heads, kvHeads, hd) in [(14, 2, 64), (4, 1, 32), (6, 2, 48), (4, 2, 24), (2, 1, 288)] {
                let n = poolBlocks * blockSize * kvHeads * hd
                let keys = (0..<n).map { _ in Float(rng.unit() * 6 - 3) }, values = (0..<n).map { _ in Float(rng.unit() * 2 - 1) }
                let (kq, kr) = q8Cache(keys, hd: hd), (vq, vr) = q8Cache(values, hd: hd)
                XCTAssertLessThan(zip(keys, kr).map { abs($0 - $1) }.max()!, 3.0 / 254 + 1e-3, "rounding within half a step")
                XCTAssertGreaterThan(zip(keys, kr).map { abs($0 - $1) }.max()!, 0)
                assertAttendsAsValues(kind: Int32(QWEN_KV_Q8_0), stored: (kq, vq), values: (kr, vr), heads: heads, kvHeads: kvHeads,
                                      hd: hd, blockSize: blockSize, poolBlocks: poolBlocks, rng: &rng)
            }
        }
    }

    /// Rows of one sequence attended together (each key and value read once for the block) give
    /// every row bit for bit what it gets alone, for each cache type, head widths on both paths
    /// (AVX-512: 64, 128, 48; portable: 24) and blocks that start and end inside key tiles.
    func testBlockedRowsAreBitIdenticalToRowsAlone() {
        forEachCPULevel { level in
            var rng = SeededRandom(seed: 10)
            let blockSize = 16, poolBlocks = 14
            for (heads, kvHeads, hd) in [(14, 2, 64), (16, 8, 128), (6, 2, 48), (4, 2, 24)] {
                for kind in [QWEN_KV_F32, QWEN_KV_F16, QWEN_KV_Q8_0].map(Int32.init) {
                    // Caches of each type built from values (random bytes would hold f16/q8 NaN and Inf patterns).
                    let floats = poolBlocks * blockSize * kvHeads * hd
                    let kf = (0..<floats).map { _ in Float(rng.unit() * 4 - 2) }, vf = (0..<floats).map { _ in Float(rng.unit() * 2 - 1) }
                    func stored(_ x: [Float]) -> [UInt8] {
                        switch kind {
                        case Int32(QWEN_KV_F32): return bytes(x)
                        case Int32(QWEN_KV_F16):
                            var h = [UInt16](repeating: 0, count: x.count)
                            qwen_f32_to_f16(x, &h, Int32(x.count))
                            return bytes(h)
                        default: return q8Cache(x, hd: hd).bytes
                        }
                    }
                    let keys = stored(kf), values = stored(vf)
                    let table: [Int32] = (0..<poolBlocks).map { Int32($0) }.shuffled(using: &rng)
                    let group = heads / kvHeads, qw = heads * hd, scale = 1 / Float(hd).squareRoot()
                    for (ctx0, n) in [(1, 1), (1, 16), (15, 5), (16, 16), (17, 3), (100, 16), (190, 34)] {
                        let q = (0..<(n * qw)).map { _ in Float(rng.unit() * 4 - 2) }
                        var together = [Float](repeating: .nan, count: n * qw)
                        var scratch = [Float](repeating: .nan, count: n * group * (ctx0 + n) + 80 * hd)
                        qwen_attend_paged_rows(q, Int32(qw), Int32(n), Int32(ctx0), Int32(heads), Int32(kvHeads), Int32(hd), keys, values, table,
                                               Int32(blockSize), scale, &together, &scratch, 0, Int32(kvHeads), kind)
                        for i in 0..<n {
                            var alone = [Float](repeating: .nan, count: qw)
                            qwen_attend_paged_kv(Array(q[(i * qw)..<((i + 1) * qw)]), Int32(heads), Int32(kvHeads), Int32(hd), keys, values, table,
                                                 Int32(blockSize), Int32(ctx0 + i), scale, &alone, &scratch, 0, Int32(kvHeads), kind)
                            XCTAssertEqual(Array(together[(i * qw)..<((i + 1) * qw)]).map(\.bitPattern), alone.map(\.bitPattern),
                                           "\(level) hd \(hd) kind \(kind) ctx0 \(ctx0) n \(n) row \(i)")
                        }
                    }
                }
            }
        }
    }
}
