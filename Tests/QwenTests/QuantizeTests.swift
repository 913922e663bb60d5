import CQwenKernels
import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// `--quantize`: float checkpoints quantized at load with ggml's rules, and what it costs.
final class QuantizeTests: XCTestCase {
    /// The blocks equal those of ggml's reference quantizer (the gguf package's), byte for byte.
    func testBlocksEqualGGMLReference() throws {
        let obj = try XCTUnwrap(try Fixtures.json("expected/quantize.json") as? [String: Any])
        let rows = obj["rows"] as! Int, cols = obj["cols"] as! Int
        let x = (obj["x"] as! [NSNumber]).map(\.floatValue)
        for (name, type) in [("q8_0", QWEN_Q8_0), ("q4_0", QWEN_Q4_0)] {
            let hex = obj[name] as! String
            let want = stride(from: 0, to: hex.count, by: 2).map { i -> UInt8 in
                UInt8(hex[hex.index(hex.startIndex, offsetBy: i)..<hex.index(hex.startIndex, offsetBy: i + 2)], radix: 16)!
            }
            var got = [UInt8](repeating: 0, count: want.count)
            XCTAssertEqual(qwen_quantize_rows(Int32(type), x, rows, Int32(cols), &got), want.count)
            XCTAssertEqual(got, want, name)
        }
    }

    /// Q4_K blocks equal llama.cpp's own (llama-quantize --pure on rows of a random Qwen3-0.6B's
    /// matrices; `make_fixtures.py --q4k-from`), byte for byte.
    func testQ4KBlocksEqualLlamaCpp() throws {
        let cases = try XCTUnwrap(try Fixtures.json("expected/quantize_q4k.json") as? [[String: Any]])
        XCTAssertEqual(cases.count, 3)
        for c in cases {
            let rows = c["rows"] as! Int, cols = c["cols"] as! Int
            let x = (c["x"] as! [NSNumber]).map(\.floatValue)
            let hex = Array((c["q4_k"] as! String).utf8)
            let want = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<($0 + 2)], as: UTF8.self), radix: 16)! }
            var got = [UInt8](repeating: 0, count: want.count)
            XCTAssertEqual(qwen_quantize_rows(Int32(QWEN_Q4_K), x, rows, Int32(cols), &got), want.count)
            var differing = 0
            for b in 0..<(want.count / 144) where got[(b * 144)..<((b + 1) * 144)] != want[(b * 144)..<((b + 1) * 144)] { differing += 1 }
            XCTAssertEqual(differing, 0, "\(c["name"]!): \(differing) of \(want.count / 144) blocks differ")
        }
        XCTAssertEqual(qwen_quant_row_bytes(Int32(QWEN_Q4_K), 512), 288)
        var out = [UInt8](repeating: 0, count: 144)
        XCTAssertEqual(qwen_quantize_rows(Int32(QWEN_Q4_K), [Float](repeating: 1, count: 96), 1, 96, &out), -1, "widths must be multiples of 256")
    }

    /// Logits of the quantized tiny model against transformers' f32 ones. Random tiny checkpoints
    /// are a harsh case (no structure, 64-wide layers): measured q8_0 2.9% of the logit spread at
    /// worst with top-1 68/71, q4_0 46% and 31/71 (the README states these). The bounds catch a
    /// broken quantizer (garbage gives errors past the spread and chance agreement); the exact
    /// check is the byte comparison with ggml's reference above.
    func testQuantizedLogitsStayClose() throws {
        for (type, bound) in [(QuantizeType.q8_0, Float(0.05)), (.q4_0, 0.6)] {
            for compute in [ComputeChoice.f32, .int8] {
                let loaded = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"), choice: compute, quantize: type)
                let m = loaded.model
                XCTAssertEqual(try XCTUnwrap(m.weights.layers[0].q as? CompactMatrix).storageType, Int32(type == .q8_0 ? QWEN_Q8_0 : QWEN_Q4_0))
                XCTAssertEqual(try XCTUnwrap(m.weights.layers[0].q as? CompactMatrix).computesInt8, compute == .int8)
                let (worst, agree, rows) = try logitDistance(m, expected: "qwen3")
                print("--quantize \(type.rawValue), compute \(compute.rawValue): worst |Δlogit|/spread \(worst), top-1 agreement \(agree)/\(rows)")
                XCTAssertGreaterThan(worst, 0)
                XCTAssertLessThan(worst, bound, "\(type) \(compute)")
                XCTAssertGreaterThanOrEqual(Double(agree), (type == .q8_0 ? 0.9 : 0.35) * Double(rows), "\(type) \(compute)")
            }
        }
    }

    /// `--quantize q4_k`: matrices whose width is not a multiple of 256 (all of the tiny model's)
    /// take Q8_0, and the model loads and runs in both compute modes.
    func testQ4KFallsBackToQ8ForNarrowMatrices() throws {
        for compute in [ComputeChoice.f32, .int8] {
            let loaded = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"), choice: compute, quantize: .q4_k)
            XCTAssertEqual(try XCTUnwrap(loaded.model.weights.layers[0].q as? CompactMatrix).storageType, Int32(QWEN_Q8_0))
            let (worst, _, _) = try logitDistance(loaded.model, expected: "qwen3")
            XCTAssertLessThan(worst, 0.05)
        }
    }

    /// Quantized GGUF tensors pass through untouched; only float matrices are quantized.
    func testAlreadyQuantizedWeightsPassThrough() throws {
        let g = try GGUFFile(path: Fixtures.path("qwen3-tiny.gguf"))
        let q = QuantizedSource(g, type: .q8_0)
        for name in g.tensorNames {
            guard let c = g.compactStorage(name), c.0 != Int32(QWEN_F16) && c.0 != Int32(QWEN_BF16) else { continue }
            XCTAssertEqual(q.compactStorage(name)?.0, c.0, name)
            XCTAssertEqual(q.compactStorage(name)?.1, c.1, name)
        }
        XCTAssertNil(q.compactStorage("model.norm.weight").map { $0.0 == Int32(QWEN_Q8_0) ? 1 : nil } ?? nil)
    }

    /// A GGUF whose matrices are f32 (convert_hf_to_gguf --outtype f32, or `fuse` output) is a
    /// float checkpoint too: its matrices are quantized like safetensors ones.
    func testF32GGUFMatricesAreQuantized() throws {
        let src = try GGUFFile(path: Fixtures.path("qwen3-tiny.gguf"))
        var replacing: [String: FloatBuffer] = [:]
        for name in src.tensorNames where src.shape(of: name)?.count == 2 { replacing[name] = try src.floats(name) }
        let path = try temporaryDirectory(self) + "/f32.gguf"
        try GGUFWriter.rewrite(src, replacing: replacing, to: path)
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.tensors["model.layers.0.self_attn.q_proj.weight"]?.type, .f32)
        let q = QuantizedSource(g, type: .q8_0)
        XCTAssertEqual(q.compactStorage("model.layers.0.self_attn.q_proj.weight")?.0, Int32(QWEN_Q8_0))
        let loaded = try LoadedModel.load(path: path, choice: .f32, quantize: .q8_0)
        XCTAssertEqual(try XCTUnwrap(loaded.model.weights.layers[0].q as? CompactMatrix).storageType, Int32(QWEN_Q8_0))
    }
}
