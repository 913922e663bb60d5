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
}
