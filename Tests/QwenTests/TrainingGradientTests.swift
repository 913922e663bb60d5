import Foundation
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// The trainer's loss and LoRA gradients against PyTorch + PEFT on the tiny checkpoints
/// (scripts/make_fixtures.py writes train/ and expected/train.json): A and B both random,
/// every projection, batches of several sequences of different lengths, mask_prompt on and off.
final class TrainingGradientTests: XCTestCase {
    struct Grad {
        let layer: Int
        let module: String
        let a: [Float]
        let b: [Float]
    }

    func expected(_ name: String) throws -> [(batch: TrainingBatch, loss: Float, grads: [Grad])] {
        let all = try XCTUnwrap(try Fixtures.json("expected/train.json") as? [String: Any])
        let cases = try XCTUnwrap(all[name] as? [[String: Any]])
        return try cases.map { c in
            let b = try XCTUnwrap(c["batch"] as? [String: Any])
            let seqs = try XCTUnwrap(b["sequences"] as? [[Int]]).map { $0.map(Int32.init) }
            let grads = try XCTUnwrap(c["grads"] as? [[String: Any]]).map { g in
                Grad(layer: g["layer"] as! Int, module: g["module"] as! String,
                     a: (g["a"] as! [Double]).map(Float.init), b: (g["b"] as! [Double]).map(Float.init))
            }
            return (TrainingBatch(sequences: seqs, offsets: try XCTUnwrap(b["offsets"] as? [Int])),
                    Float(try XCTUnwrap(c["loss"] as? Double)), grads)
        }
    }

    /// ‖got − want‖ / ‖want‖.
    func relativeError(_ got: [Float], _ want: [Float]) -> Float {
        precondition(got.count == want.count)
        var num: Double = 0, den: Double = 0
        for (g, w) in zip(got, want) {
            num += Double(g - w) * Double(g - w)
            den += Double(w) * Double(w)
        }
        return Float((num / max(den, 1e-30)).squareRoot())
    }

    func check(base: String, adapter: String, checkpoint: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
        let m = try LoadedModel.load(path: Fixtures.path(base), f32Weights: .no).model
        let loaded = try LoRAAdapter.load(path: Fixtures.path("train/" + adapter), config: m.config)
        for (k, c) in try expected(adapter).enumerated() {
            let params = try LoRAParameters(adapter: loaded, config: m.config)
            let pass = LoRATrainingPass(model: m, parameters: params, checkpoint: checkpoint, logitRows: 5)
            let (loss, tokens) = try pass.lossAndGradients(c.batch)
            XCTAssertEqual(tokens, c.batch.trainedTokens, file: file, line: line)
            XCTAssertLessThan(abs(loss - c.loss) / c.loss, 1e-5, "case \(k): loss \(loss) vs PEFT \(c.loss)", file: file, line: line)
            XCTAssertEqual(c.grads.count, params.tensors.count, file: file, line: line)
            for g in c.grads {
                let p = try XCTUnwrap(Projection.allCases.first { $0.shortName == g.module })
                let t = try XCTUnwrap(params.tensor(layer: g.layer, p), "no tensor for layer \(g.layer) \(g.module)")
                // PEFT's B gradient is [out × rank]; ours is of Bᵀ.
                var gb = [Float](repeating: 0, count: t.rank * t.outDim)
                for j in 0..<t.rank { for o in 0..<t.outDim { gb[o * t.rank + j] = t.gradBt[j * t.outDim + o] } }
                let ea = relativeError(t.gradA.array, g.a), eb = relativeError(gb, g.b)
                XCTAssertLessThan(ea, 1e-4, "case \(k) layer \(g.layer) \(g.module): dA relative error \(ea)", file: file, line: line)
                XCTAssertLessThan(eb, 1e-4, "case \(k) layer \(g.layer) \(g.module): dB relative error \(eb)", file: file, line: line)
                XCTAssertGreaterThan(g.a.map(abs).max() ?? 0, 0, "a zero reference gradient proves nothing", file: file, line: line)
            }
            // Without gradients, the same loss.
            let lossOnly = try pass.loss(c.batch).loss
            XCTAssertEqual(lossOnly, loss, accuracy: 1e-6 * loss, file: file, line: line)
        }
    }

    func testQwen3AllProjections() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-all") }
    func testQwen3AllProjectionsCheckpointed() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-all", checkpoint: true) }
    func testQwen3TopLayersOnly() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-qv-top") }
    func testQwen3FromBF16Storage() throws { try check(base: "qwen3-tiny-bf16", adapter: "qwen3-all") }
    func testQwen2WithBiasesAndTiedHead() throws { try check(base: "qwen2-tiny", adapter: "qwen2-all") }
    func testQwen3QuantizedGGUF() throws { try check(base: "qwen3-tiny.gguf", adapter: "qwen3-gguf-qv") }
}

/// An adapter trained by `qwen-serve lora` (both layouts, committed in train/trained-*), loaded
/// by PEFT in transformers and by mlx-lm when the fixtures were made: this server gives their
/// logits with it.
final class TrainedAdapterRoundTripTests: XCTestCase {
    func testServerGivesPEFTAndMLXLogits() throws {
        let e = try XCTUnwrap(try Fixtures.json("expected/trained_adapter.json") as? [String: Any])
        let prompts = try XCTUnwrap(e["prompts"] as? [[Int]])
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32")).model
        for (dir, key) in [("trained-peft", "peft"), ("trained-mlx", "mlx")] {
            let want = try XCTUnwrap(e[key] as? [[Double]], "no \(key) logits in the fixture")
            let adapter = try LoRAAdapter.load(path: Fixtures.path("train/" + dir), config: m.config)
            for (p, w) in zip(prompts, want) {
                let got = try m.forward([.init(cache: KVCache(config: m.config), tokens: p.map(Int32.init), adapter: adapter)])[0]
                let base = try m.forward([.init(cache: KVCache(config: m.config), tokens: p.map(Int32.init))])[0]
                let diff = zip(got, w).map { abs(Double($0) - $1) }.max() ?? 1
                let moved = zip(base, w).map { abs(Double($0) - $1) }.max() ?? 0
                XCTAssertLessThan(diff, 1e-4, "\(dir): logits differ from \(key)'s by \(diff)")
                XCTAssertGreaterThan(moved, 0.05, "\(dir): the trained adapter must change the logits")
            }
        }
    }
}
