import Foundation
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// The default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) against transformers
/// running the same dequantized weights in f32.
final class RealModelTests: XCTestCase {
    func testGreedyContinuationsMatchTransformers() throws { try check(.yes) }

    /// Without f32 copies every product, the prompt's too, expands the quantized blocks.
    func testWithoutF32CopiesToo() throws { try check(.no) }

    /// The int8 mode (inputs rounded to 8 bits per 32 values, as llama.cpp computes quantized
    /// models) is not transformers' arithmetic: fed transformers' greedy continuations, its most
    /// likely next token must agree at nearly every position, and its logits stay close.
    func testInt8ModeFollowsTransformersGreedyPath() throws {
        // Runs wherever int8 is the default mode (every kernel set but the portable one gives the
        // same bits); the portable C kernel is tested bit-exact against them on the tiny models.
        guard CPUFeatures.int8Kernel != "portable" else {
            throw XCTSkip("int8 is not the default mode here: no AVX2 or VNNI at kernel level \(CPUFeatures.level)")
        }
        let loaded = try LoadedModel.load(path: try Fixtures.defaultModel(), compute: .int8)
        let m = loaded.model
        let cases = try XCTUnwrap(try Fixtures.json("expected/real_model.json") as? [[String: Any]])
        var positions = 0, agree = 0, worst: Float = 0
        for c in cases {
            let ids = ints32(c["ids"]), want = ints32(c["greedy"])
            let logits = try m.forward([.init(cache: KVCache(config: m.config), tokens: ids + want.dropLast(), logits: .all)])[0]
            let vocab = m.config.vocabSize
            for (id, v) in zip(ints32(c["top_ids"]), floats(c["top_logits"])) {
                worst = max(worst, abs(logits[(ids.count - 1) * vocab + Int(id)] - v))
            }
            for (k, token) in want.enumerated() {
                let row = (ids.count - 1 + k) * vocab
                let best = (0..<vocab).max { logits[row + $0] < logits[row + $1] }!
                agree += best == Int(token) ? 1 : 0
                positions += 1
            }
        }
        print("int8 real model: top-1 agreement \(agree)/\(positions), worst |Δ top logit| \(worst)")
        XCTAssertGreaterThanOrEqual(Double(agree), 0.95 * Double(positions))
        XCTAssertLessThan(worst, 0.5)
    }

    func check(_ f32Weights: F32Weights) throws {
        let path = try Fixtures.defaultModel()
        let loaded = try LoadedModel.load(path: path, f32Weights: f32Weights)
        let cases = try XCTUnwrap(try Fixtures.json("expected/real_model.json") as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 3)
        for c in cases {
            let prompt = c["prompt"] as! String
            let ids = loaded.tokenizer.encode(prompt)
            XCTAssertEqual(ids, ints32(c["ids"]), "prompt tokens for \(prompt.debugDescription)")
            let want = ints32(c["greedy"])
            XCTAssertEqual(want.count, 48)

            let logits = try loaded.model.forward([.init(cache: KVCache(config: loaded.model.config), tokens: ids)])[0]
            let topIds = ints32(c["top_ids"]), topLogits = floats(c["top_logits"])
            for (id, v) in zip(topIds, topLogits) {
                XCTAssertEqual(logits[Int(id)], v, accuracy: 2e-3, "logit of \(id)")
            }

            let got = try Generator(model: loaded.model, tokenizer: loaded.tokenizer)
                .generate(prompt: ids, maxTokens: 48, params: .greedy, ignoreEOS: true)
            XCTAssertEqual(got.tokens, want, "greedy continuation of \(prompt.debugDescription): \(got.text.debugDescription)")
        }
    }
}
