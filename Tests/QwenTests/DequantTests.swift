import Foundation
import QwenFormats
import QwenKernels
import QwenRuntime
import XCTest

/// Block dequantization of every supported ggml type against gguf-py on random blocks.
final class DequantTests: XCTestCase {
    func testAllTypesMatchGGUFPy() throws {
        let cases = try XCTUnwrap(try Fixtures.json("expected/dequant.json") as? [[String: Any]])
        var seen: Set<String> = []
        for c in cases {
            let name = c["type"] as! String
            let type = try XCTUnwrap(GGMLType(rawValue: UInt32(c["ggml_type"] as! Int)), name)
            XCTAssertEqual(type.description, name)
            let hex = Array((c["bytes"] as! String).utf8)
            var bytes = [UInt8]()
            for i in stride(from: 0, to: hex.count, by: 2) { bytes.append(UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16)!) }
            let want = floats(c["values"])
            var got = [Float](repeating: .nan, count: want.count)
            XCTAssertEqual(bytes.count, want.count / type.blockSize * type.blockBytes, name)
            bytes.withUnsafeBytes { src in
                got.withUnsafeMutableBufferPointer { GGMLDequant.dequantize(type: type, src: src.baseAddress!, dst: $0.baseAddress!, count: want.count) }
            }
            for i in 0..<want.count where got[i] != want[i] {
                XCTFail("\(name)[\(i)]: got \(got[i]), gguf-py \(want[i])")
                break
            }
            seen.insert(name)
        }
        XCTAssertEqual(seen, ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"])
    }
}

/// The compact kernels (products straight from stored blocks) against f32 products of
/// gguf-py's dequantized values, for every storage type.
final class CompactMatrixTests: XCTestCase {
    func testCompactProductsEqualF32Products() throws {
        let cases = try XCTUnwrap(try Fixtures.json("expected/dequant.json") as? [[String: Any]])
        var rng = SeededRandom(seed: 5)
        for c in cases {
            let name = c["type"] as! String
            let type = GGMLType(rawValue: UInt32(c["ggml_type"] as! Int))!
            let hex = Array((c["bytes"] as! String).utf8)
            var bytes = [UInt8]()
            for i in stride(from: 0, to: hex.count, by: 2) { bytes.append(UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16)!) }
            var values = floats(c["values"])
            if type == .f16 || type == .bf16 {
                // The fixture's 16-bit cases are tiny; make a 4×64 matrix of exact 16-bit values.
                values = (0..<256).map { _ in rng.unit() * 4 - 2 }
                bytes = []
                for v in values {
                    let bits: UInt16 = type == .bf16 ? UInt16(v.bitPattern >> 16) : Float16(v).bitPattern
                    bytes += [UInt8(bits & 0xFF), UInt8(bits >> 8)]
                }
                values = (0..<256).map { i in
                    let bits = UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8
                    return type == .bf16 ? HalfFloat.bf16ToFloat(bits) : HalfFloat.f16ToFloat(bits)
                }
            }
            // One block per row: rows = blocks, cols = block size (at least 32).
            let cols = type.blockSize == 1 ? 64 : type.blockSize, rows = values.count / cols
            let storage = FloatBuffer(values)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
            defer { raw.deallocate() }
            raw.copyMemory(from: bytes, byteCount: bytes.count)
            let compact = CompactMatrix(rows: rows, cols: cols, storageType: Int32(type.rawValue), data: raw, owner: storage, dense: storage)
            compact.alwaysCompact = true
            let dense = F32Matrix(rows: rows, cols: cols, data: storage)
            for n in [1, 3, 8, 12, 16, 17] {
                let x = FloatBuffer((0..<(n * cols)).map { _ in rng.unit() * 2 - 1 })
                let a = FloatBuffer(count: n * rows), b = FloatBuffer(count: n * rows)
                compact.multiply(x.pointer, n: n, into: a.pointer, accumulate: false)
                dense.multiply(x.pointer, n: n, into: b.pointer, accumulate: false)
                for i in 0..<(n * rows) {
                    XCTAssertEqual(a[i], b[i], accuracy: 1e-4 * max(1, abs(b[i])), "\(name) n=\(n) [\(i)]")
                }
                // Accumulating adds to what is there.
                compact.multiply(x.pointer, n: n, into: a.pointer, accumulate: true)
                for i in 0..<(n * rows) { XCTAssertEqual(a[i], 2 * b[i], accuracy: 2e-4 * max(1, abs(b[i])), "\(name) accumulate") }
            }
        }
    }

    /// Several products of one input in one dispatch (q/k/v, gate/up) equal the products one
    /// by one, whether every matrix runs the compact kernel or one of them falls back to sgemm.
    func testSharedInputProductsEqualSingleProducts() {
        var rng = SeededRandom(seed: 11)
        let cols = 64
        func bf16Matrix(rows: Int) -> (CompactMatrix, UnsafeMutableRawPointer) {
            let values = (0..<(rows * cols)).map { _ in Float(rng.unit() * 2 - 1) }
            let bits = values.map { UInt16($0.bitPattern >> 16) }
            let raw = UnsafeMutableRawPointer.allocate(byteCount: bits.count * 2, alignment: 64)
            raw.copyMemory(from: bits, byteCount: bits.count * 2)
            let dense = FloatBuffer(bits.map { HalfFloat.bf16ToFloat($0) })
            return (CompactMatrix(rows: rows, cols: cols, storageType: 30, data: raw, owner: dense, dense: dense), raw)
        }
        let (a, ra) = bf16Matrix(rows: 45), (b, rb) = bf16Matrix(rows: 7), (c, rc) = bf16Matrix(rows: 130)
        defer { ra.deallocate(); rb.deallocate(); rc.deallocate() }
        let plain = F32Matrix(rows: 9, cols: cols, data: FloatBuffer((0..<(9 * cols)).map { _ in rng.unit() - 0.5 }))
        for n in [1, 10, 17] {
            let x = FloatBuffer((0..<(n * cols)).map { _ in rng.unit() * 2 - 1 })
            for set in [[a, b, c] as [WeightMatrix], [a, plain, c]] {
                let together = set.map { FloatBuffer(count: n * $0.rows) }, alone = set.map { FloatBuffer(count: n * $0.rows) }
                CompactMatrix.multiply(zip(set, together).map { ($0, $1.pointer) }, x.pointer, n: n)
                for (m, out) in zip(set, alone) { m.multiply(x.pointer, n: n, into: out.pointer, accumulate: false) }
                for (t, o) in zip(together, alone) {
                    for i in 0..<t.count { XCTAssertEqual(t[i], o[i], accuracy: 1e-5 * max(1, abs(o[i])), "n=\(n) [\(i)]") }
                }
            }
        }
    }

    /// Random matrices of many blocks per row and odd row counts, through every kernel path
    /// (one and two weight rows at a time, 1–17 input rows) at every level, against the dequantized
    /// matrix, and each input row against itself alone.
    func testKernelsOnRandomMatrices() throws {
        forEachCPULevel { level in kernelsOnRandomMatrices(level) }
    }

    func kernelsOnRandomMatrices(_ level: String) {
        var rng = SeededRandom(seed: 9)
        for type in [GGMLType.q5_0, .q8_0, .q4_K, .q6_K, .bf16, .q4_0, .q4_1, .q5_1, .q5_K, .f16] {
            // 37 rows make row ranges of 3 on up to 16 workers' chunks: the two-weight-row loops and
            // their one-row remainders both run.
            let cols = type.blockSize == 256 ? 512 : 96, rows = 37
            let blocks = RandomBlocks(type, rows: rows, cols: cols, rng: &rng)
            let compact = CompactMatrix(rows: rows, cols: cols, storageType: Int32(type.rawValue), data: blocks.raw, owner: blocks,
                                        dense: blocks.dense)
            compact.alwaysCompact = true
            let reference = F32Matrix(rows: rows, cols: cols, data: blocks.dense)
            for n in [1, 2, 5, 6, 7, 10, 12, 13, 16] {
                let x = FloatBuffer((0..<(n * cols)).map { _ in rng.unit() * 2 - 1 })
                let a = FloatBuffer(count: n * rows), b = FloatBuffer(count: n * rows)
                compact.multiply(x.pointer, n: n, into: a.pointer, accumulate: false)
                reference.multiply(x.pointer, n: n, into: b.pointer, accumulate: false)
                let scale = (0..<(n * rows)).map { abs(b[$0]) }.max()! + 1e-3
                for i in 0..<(n * rows) {
                    XCTAssertEqual(a[i], b[i], accuracy: 1e-4 * scale, "\(level): \(type) n=\(n) [\(i)]")
                }
                // Each input row gets the same bits alone as with the others (a sequence's results
                // must not depend on its batch).
                for r in 0..<n {
                    let alone = FloatBuffer(count: rows)
                    compact.multiply(x.pointer + r * cols, n: 1, into: alone.pointer, accumulate: false)
                    XCTAssertEqual((0..<rows).map { alone[$0].bitPattern }, (0..<rows).map { a[r * rows + $0].bitPattern },
                                   "\(level): \(type) row \(r) of \(n) alone")
                }
            }
            // Each weight is expanded to exactly the reference's value: input rows of one 1 and
            // zeros elsewhere read the dequantized matrix back, column by column.
            let unit = FloatBuffer(count: cols * cols), read = FloatBuffer(count: cols * rows)
            for j in 0..<cols { unit[j * cols + j] = 1 }
            for j in stride(from: 0, to: cols, by: 8) {  // 8 rows a product: few enough for the compact kernel
                compact.multiply(unit.pointer + j * cols, n: min(8, cols - j), into: read.pointer + j * rows, accumulate: false)
            }
            let weight = { (k: Int) in read[(k % cols) * rows + k / cols] }  // k = row · cols + column
            if let k = (0..<(rows * cols)).first(where: { weight($0) != blocks.dense[$0] }) {
                XCTFail("\(level): \(type) weight [\(k / cols), \(k % cols)] reads \(weight(k)), dequantized \(blocks.dense[k])")
            }
        }
    }
}
