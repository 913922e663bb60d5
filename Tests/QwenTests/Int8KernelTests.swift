import CQwenKernels
import Foundation
import QwenFormats
import QwenKernels
import QwenRuntime
import XCTest

/// The int8 compute mode: input quantization, and the integer kernel against f32 products of
/// the same rounded inputs with the dequantized weights.
final class Int8KernelTests: XCTestCase {
    struct Quantized {
        var q: [Int8]
        var d: [Float]
        var sums: [Int32]
    }

    func quantize(_ x: [Float], n: Int, cols: Int) -> Quantized {
        var r = Quantized(q: Array(repeating: 0, count: n * cols), d: Array(repeating: 0, count: n * cols / 32),
                          sums: Array(repeating: 0, count: n * cols / 16))
        qwen_q8_quantize(x, Int32(n), Int32(cols), Int32(cols), &r.q, &r.d, &r.sums)
        return r
    }

    func dequantize(_ r: Quantized, n: Int, cols: Int) -> [Float] {
        var x = [Float](repeating: 0, count: n * cols)
        qwen_q8_dequantize(r.q, r.d, Int32(n), Int32(cols), &x)
        return x
    }

    func testInputsRoundToTheNearestStepOfTheirBlock() {
        var rng = SeededRandom(seed: 5)
        let n = 3, cols = 96
        var x = (0..<(n * cols)).map { _ in (rng.unit() * 2 - 1) * 3 }
        for j in 32..<64 { x[j] = 0 }  // an all-zero block
        x[70] = -1000  // a block dominated by one value
        let r = quantize(x, n: n, cols: cols)
        for b in 0..<(n * cols / 32) {
            let block = x[(32 * b)..<(32 * b + 32)]
            let amax = block.map(abs).max()!
            XCTAssertEqual(r.d[b], amax / 127, accuracy: amax * 1e-7, "block \(b)")
            var largest = 0
            for j in 0..<32 {
                let k = 32 * b + j
                XCTAssertLessThanOrEqual(abs(r.d[b] * Float(r.q[k]) - x[k]), r.d[b] * 0.5001 + 1e-30, "value \(k)")
                largest = max(largest, abs(Int(r.q[k])))
            }
            XCTAssertEqual(largest, amax == 0 ? 0 : 127, "block \(b)")
            for h in 0..<2 {
                XCTAssertEqual(r.sums[2 * b + h], (0..<16).reduce(Int32(0)) { $0 + Int32(r.q[32 * b + 16 * h + $1]) })
            }
        }
    }

    /// Input quantization gives the same bytes, scales and sums at every kernel level (each
    /// rounds to nearest even), ties and saturating values included.
    func testInputQuantizationIsTheSameAtEveryLevel() {
        var rng = SeededRandom(seed: 12)
        let n = 5, cols = 128
        var x = (0..<(n * cols)).map { _ in (rng.unit() * 2 - 1) * 5 }
        for j in 0..<32 { x[j] = Float(j - 16) * 0.5 }  // halves: ties at every other value
        for j in 32..<64 { x[j] = 0 }
        x[200] = 1e30
        var results: [String: Quantized] = [:]
        forEachCPULevel { level in results[level] = quantize(x, n: n, cols: cols) }
        let portable = results["portable"]!
        for (level, r) in results {
            XCTAssertEqual(r.q, portable.q, level)
            XCTAssertEqual(r.d.map(\.bitPattern), portable.d.map(\.bitPattern), level)
            XCTAssertEqual(r.sums, portable.sums, level)
        }
    }

    static let types: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

    /// Every repacked type, 37 rows (a partial last panel of 16), 1–25 input rows (register groups
    /// of up to 12, balanced), with and without accumulation, against sgemm on the dequantized
    /// weights and the rounded inputs; and the plain C kernel against the VNNI one.
    func testProductsEqualF32ProductsOfTheRoundedInputs() throws {
        var rng = SeededRandom(seed: 17)
        for type in Self.types {
            let cols = type.blockSize == 256 ? 512 : 96, rows = 37
            let blocks = RandomBlocks(type, rows: rows, cols: cols, rng: &rng)
            let m = CompactMatrix(rows: rows, cols: cols, storageType: Int32(type.rawValue), data: blocks.raw, owner: blocks,
                                  dense: blocks.dense, int8: true)
            XCTAssertTrue(m.computesInt8, "\(type)")
            XCTAssertFalse(m.hasF32Copy, "\(type): the int8 mode needs no f32 copy")
            let reference = F32Matrix(rows: rows, cols: cols, data: blocks.dense)
            for n in [1, 2, 3, 5, 10, 12, 13, 16, 25] {
                let x = (0..<(n * cols)).map { _ in rng.unit() * 2 - 1 }
                let rounded = FloatBuffer(dequantize(quantize(x, n: n, cols: cols), n: n, cols: cols))
                let want = FloatBuffer(count: n * rows), got = FloatBuffer(count: n * rows)
                reference.multiply(rounded.pointer, n: n, into: want.pointer, accumulate: false)
                m.multiply(x, n: n, into: got.pointer, accumulate: false)
                let scale = want.array.map(abs).max()! + 1e-3
                for i in 0..<(n * rows) {
                    XCTAssertEqual(got[i], want[i], accuracy: 2e-5 * scale, "\(type) n=\(n) [\(i)]")
                }
                let acc = FloatBuffer(Array(repeating: 1, count: n * rows))
                m.multiply(x, n: n, into: acc.pointer, accumulate: true)
                for i in 0..<(n * rows) { XCTAssertEqual(acc[i], 1 + got[i], accuracy: 1e-5 * (scale + 1), "\(type) n=\(n) accumulate") }

                let plain = plainKernel(type, blocks.bytes, rows: rows, cols: cols, x, n: n)
                for i in 0..<(n * rows) { XCTAssertEqual(plain[i], got[i], accuracy: 1e-5 * scale, "\(type) n=\(n) plain C [\(i)]") }
            }
        }
    }

    /// The C fallback for CPUs without VNNI or AVX2, called directly.
    func plainKernel(_ type: GGMLType, _ bytes: [UInt8], rows: Int, cols: Int, _ x: [Float], n: Int) -> [Float] {
        kernel(Int32(QWEN_I8_PORTABLE), type, bytes, rows: rows, cols: cols, x, n: n)
    }

    /// Every kernel set this CPU can run gives bit-identical results to the plain C version, for
    /// every repacked type, 1–14 input rows (the 256-bit kernels' groups of ≤ 4, VNNI's of ≤ 12)
    /// and a partial last panel. A set the CPU lacks is skipped: an AVX-512 VNNI machine runs
    /// avx2, vnni and vnni256 (the AVX-VNNI code in EVEX encoding), not avxvnni itself.
    func testEveryKernelSetIsBitIdenticalToPlainC() throws {
        var rng = SeededRandom(seed: 29)
        var ran = Set<Int32>()
        for type in Self.types {
            let cols = type.blockSize == 256 ? 512 : 96, rows = 37
            let blocks = RandomBlocks(type, rows: rows, cols: cols, rng: &rng)
            for n in [1, 2, 3, 4, 5, 7, 9, 13, 14] {
                // Inputs with large values of both signs, so Q8_0's pairwise sums would overflow 16 bits unrecentred.
                let x = (0..<(n * cols)).map { i in i % 7 == 0 ? Float(i % 2 == 0 ? 1 : -1) : rng.unit() * 2 - 1 }
                let plain = plainKernel(type, blocks.bytes, rows: rows, cols: cols, x, n: n)
                for k in [QWEN_I8_AVX2, QWEN_I8_VNNI, QWEN_I8_AVXVNNI, QWEN_I8_VNNI256].map(Int32.init) where qwen_i8_kernel_runs(k) != 0 {
                    ran.insert(k)
                    let got = kernel(k, type, blocks.bytes, rows: rows, cols: cols, x, n: n)
                    XCTAssertEqual(got.map(\.bitPattern), plain.map(\.bitPattern), "kernel \(k), \(type), n=\(n)")
                }
            }
        }
        if ran.isEmpty { throw XCTSkip("only the portable int8 kernels run at kernel level \(CPUFeatures.level) (this CPU: \(CPUFeatures.hardwareLevel))") }
        if !ran.contains(Int32(QWEN_I8_AVXVNNI)) {
            print("note: this CPU lacks AVX-VNNI; its kernel's code ran as vnni256 (EVEX encoding) instead")
        }
    }

    /// The AVX2 kernel adds several pairwise 16-bit products in 16 bits before widening them: with
    /// every stored value at its largest and every input at ±127, the sums must still be exact.
    func testSixteenBitSumsHoldAtTheLargestValues() throws {
        var rng = SeededRandom(seed: 31)
        var ran = false
        for type in Self.types {
            let cols = type.blockSize == 256 ? 512 : 96, rows = 21
            let blocks = RandomBlocks(type, rows: rows, cols: cols, rng: &rng, largest: true)
            for n in [1, 2, 4, 5, 9, 13] {
                let x = (0..<(n * cols)).map { i -> Float in
                    switch (i / cols) % 3 { case 0: return 1; case 1: return -1; default: return (i / 32) % 2 == 0 ? 1 : -1 }
                }
                let plain = plainKernel(type, blocks.bytes, rows: rows, cols: cols, x, n: n)
                for k in [QWEN_I8_AVX2, QWEN_I8_VNNI, QWEN_I8_AVXVNNI, QWEN_I8_VNNI256].map(Int32.init) where qwen_i8_kernel_runs(k) != 0 {
                    ran = true
                    let got = kernel(k, type, blocks.bytes, rows: rows, cols: cols, x, n: n)
                    XCTAssertEqual(got.map(\.bitPattern), plain.map(\.bitPattern), "kernel \(k), \(type), n=\(n)")
                }
            }
        }
        if !ran { throw XCTSkip("only the portable int8 kernels run at kernel level \(CPUFeatures.level) (this CPU: \(CPUFeatures.hardwareLevel))") }
    }

    func kernel(_ k: Int32, _ type: GGMLType, _ bytes: [UInt8], rows: Int, cols: Int, _ x: [Float], n: Int) -> [Float] {
        let t = Int32(type.rawValue), panels = (rows + 15) / 16, g = Int(qwen_i8_group(t))
        // Panels and scales 64-byte aligned, as Int8Panels allocates them (the VNNI kernel loads them aligned).
        let qBytes = panels * cols / g * qwen_i8_group_bytes(t)
        let q = UnsafeMutablePointer<UInt8>(OpaquePointer(UnsafeMutableRawPointer.allocate(byteCount: qBytes, alignment: 64)))
        let scale = UnsafeMutablePointer<Float>(OpaquePointer(UnsafeMutableRawPointer.allocate(byteCount: panels * cols / g * 16 * 4, alignment: 64)))
        let mins = UnsafeMutablePointer<Float>(OpaquePointer(UnsafeMutableRawPointer.allocate(byteCount: panels * cols / 32 * 16 * 4, alignment: 64)))
        defer { q.deallocate(); scale.deallocate(); mins.deallocate() }
        qwen_i8_pack(t, bytes, Int32(rows), Int32(cols), 0, Int32(panels), q, scale, mins)
        let r = quantize(x, n: n, cols: cols)
        var corr = [Int32](repeating: 0, count: n * cols / g), dx = [Float](repeating: 0, count: n * cols / g)
        var dmin = [Float](repeating: 0, count: n * cols / 32)
        qwen_i8_terms(t, r.d, r.sums, Int32(n), Int32(cols), &corr, &dx, &dmin)
        var out = [Float](repeating: 0, count: n * rows)
        qwen_i8_matmul(t, q, scale, mins, Int32(rows), Int32(cols), 0, Int32(panels), r.q, corr, dx, dmin, Int32(n), &out, Int32(rows), 0, k)
        return out
    }

    /// A row's result does not depend on the rows it shares a product with — the property that
    /// makes a sequence's tokens in a batch identical to its tokens alone.
    func testEachRowIsTheSameAloneAndInABatch() {
        var rng = SeededRandom(seed: 23)
        for type in [GGMLType.q5_0, .q6_K, .q4_K] {
            let cols = 512, rows = 40
            let blocks = RandomBlocks(type, rows: rows, cols: cols, rng: &rng)
            let m = CompactMatrix(rows: rows, cols: cols, storageType: Int32(type.rawValue), data: blocks.raw, owner: blocks, dense: nil, int8: true)
            let n = 14
            let x = FloatBuffer((0..<(n * cols)).map { _ in rng.unit() * 2 - 1 })
            let batch = FloatBuffer(count: n * rows), one = FloatBuffer(count: rows)
            m.multiply(x.pointer, n: n, into: batch.pointer, accumulate: false)
            for i in 0..<n {
                m.multiply(x.pointer + i * cols, n: 1, into: one.pointer, accumulate: false)
                for r in 0..<rows { XCTAssertEqual(one[r], batch[i * rows + r], "\(type) row \(i) output \(r)") }
            }
        }
    }

    /// What a product reads, as the benchmarks count it: the stored blocks, or the int8 panels.
    func testBytesReadPerProduct() {
        var rng = SeededRandom(seed: 31)
        let blocks = RandomBlocks(.q4_0, rows: 40, cols: 64, rng: &rng)
        let plain = CompactMatrix(rows: 40, cols: 64, storageType: Int32(GGMLType.q4_0.rawValue), data: blocks.raw, owner: blocks, dense: nil)
        XCTAssertEqual(plain.bytesReadPerProduct, 40 * 64 / 32 * 18)
        let packed = CompactMatrix(rows: 40, cols: 64, storageType: Int32(GGMLType.q4_0.rawValue), data: blocks.raw, owner: blocks, dense: nil, int8: true)
        // 3 panels of 16 rows: per 32 values 16 × 16 bytes of nibbles and 16 f32 scales.
        XCTAssertEqual(packed.bytesReadPerProduct, 3 * 2 * (16 * 16 + 16 * 4))
    }

    /// Types without integer weights stay on the f32 path.
    func testOtherTypesAreNotRepacked() {
        let bytes = [UInt8](repeating: 0, count: 16 * 64 * 2)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
        defer { raw.deallocate() }
        for type in [GGMLType.bf16, .f16] {
            let m = CompactMatrix(rows: 16, cols: 64, storageType: Int32(type.rawValue), data: raw, owner: self, dense: nil, int8: true)
            XCTAssertFalse(m.computesInt8, "\(type)")
        }
    }
}
