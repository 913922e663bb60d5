import Foundation
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// The forward pass against transformers' logits and greedy tokens on tiny random
/// Qwen3 and Qwen2 checkpoints (scripts/make_fixtures.py).
final class ModelNumericsTests: XCTestCase {
    struct Case {
        let prompt: [Int32]
        let logits: [[Float]]
        let greedy: [Int32]
    }

    func cases(_ name: String) throws -> [Case] {
        let list = try XCTUnwrap(try Fixtures.json("expected/model_\(name).json") as? [[String: Any]])
        return list.map { c in
            Case(prompt: ints32(c["prompt"]), logits: (c["logits"] as! [Any]).map(floats), greedy: ints32(c["greedy"]))
        }
    }

    func check(model dir: String, expected: String, f32Weights: F32Weights = .yes, file: StaticString = #filePath, line: UInt = #line) throws {
        let loaded = try LoadedModel.load(path: Fixtures.path(dir), f32Weights: f32Weights)
        let m = loaded.model
        for c in try cases(expected) {
            let cache = KVCache(config: m.config)
            let got = try m.forward([.init(cache: cache, tokens: c.prompt, logits: .all)])[0]
            let vocab = m.config.vocabSize
            XCTAssertEqual(got.count, c.logits.count * vocab, file: file, line: line)
            var maxDiff: Float = 0
            for (r, row) in c.logits.enumerated() {
                for (j, v) in row.enumerated() { maxDiff = max(maxDiff, abs(got[r * vocab + j] - v)) }
            }
            XCTAssertLessThanOrEqual(maxDiff, 1e-4, "\(dir): max |Δlogit| \(maxDiff)", file: file, line: line)

            let gen = try Generator(model: m, tokenizer: loaded.tokenizer)
                .generate(prompt: c.prompt, maxTokens: c.greedy.count, params: .greedy, ignoreEOS: true)
            XCTAssertEqual(gen.tokens, c.greedy, "\(dir): greedy tokens differ", file: file, line: line)
        }
    }

    func testQwen3F32() throws { try check(model: "qwen3-tiny-f32", expected: "qwen3") }
    func testQwen3BF16() throws { try check(model: "qwen3-tiny-bf16", expected: "qwen3") }
    func testQwen3F16() throws { try check(model: "qwen3-tiny-f16", expected: "qwen3") }
    func testQwen2TiedShardedF32() throws { try check(model: "qwen2-tiny", expected: "qwen2") }
    func testQwen3GGUFQuantized() throws { try check(model: "qwen3-tiny.gguf", expected: "qwen3_gguf") }
    /// Compact storage only: prompts go through the block kernels as well.
    func testWithoutF32Copies() throws {
        try check(model: "qwen3-tiny.gguf", expected: "qwen3_gguf", f32Weights: .no)
        try check(model: "qwen3-tiny-bf16", expected: "qwen3", f32Weights: .no)
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny.gguf"), f32Weights: .no).model
        XCTAssertFalse(try XCTUnwrap(m.weights.layers[0].q as? CompactMatrix).hasF32Copy)
        XCTAssertTrue(try XCTUnwrap(LoadedModel.load(path: Fixtures.path("qwen3-tiny.gguf"), f32Weights: .yes).model.weights.layers[0].q as? CompactMatrix).hasF32Copy)
    }

    /// The int8 mode rounds every product's input to 8 bits per 32 values: logits stay close to
    /// transformers' f32 ones without equalling them, and the most likely token agrees.
    func testQwen3GGUFInt8StaysCloseToF32() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny.gguf"), compute: .int8).model
        XCTAssertTrue(try XCTUnwrap(m.weights.layers[0].q as? CompactMatrix).computesInt8)
        let (worst, agree, rows) = try logitDistance(m, expected: "qwen3_gguf")
        print("int8 tiny: worst |Δlogit|/spread \(worst), top-1 agreement \(agree)/\(rows)")
        XCTAssertGreaterThan(worst, 0, "int8 products should differ from f32 ones somewhere")
        XCTAssertLessThan(worst, 0.05)
        XCTAssertGreaterThanOrEqual(Double(agree), 0.9 * Double(rows))
    }

    func testConfigReadsQwen3Fields() throws {
        let c = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen3-tiny-f32/config.json"))
        XCTAssertEqual(c.architecture, .qwen3)
        XCTAssertEqual(c.headDim, 24)  // not hidden/heads = 16
        XCTAssertEqual(c.kvHeads, 2)
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertFalse(c.attentionBias)
        let q2 = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen2-tiny/config.json"))
        XCTAssertEqual(q2.architecture, .qwen2)
        XCTAssertTrue(q2.tieWordEmbeddings)
        XCTAssertTrue(q2.attentionBias)
        XCTAssertEqual(q2.ropeTheta, 1_000_000)
        XCTAssertEqual(q2.rmsNormEps, 1e-5)
    }

    /// A prompt fed in chunks, and several sequences stacked in one forward call, give the
    /// same logits as one sequence fed whole.
    func testChunkedAndBatchedForwardMatchWhole() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32")).model
        let all = try cases("qwen3")
        let prompt = all[1].prompt
        let whole = try m.forward([.init(cache: KVCache(config: m.config), tokens: prompt, logits: .all)])[0]

        let cache = KVCache(config: m.config, capacity: 2)
        var chunked: [Float] = []
        var i = 0
        for size in [3, 1, 5, 100] where i < prompt.count {
            let end = min(i + size, prompt.count)
            chunked += try m.forward([.init(cache: cache, tokens: Array(prompt[i..<end]), logits: .all)])[0]
            i = end
        }
        XCTAssertEqual(chunked.count, whole.count)
        for j in 0..<whole.count { XCTAssertEqual(chunked[j], whole[j], accuracy: 1e-5) }

        let others = [all[0].prompt, all[2].prompt, all[3].prompt]
        let alone = try others.map { try m.forward([.init(cache: KVCache(config: m.config), tokens: $0, logits: .all)])[0] }
        let batched = try m.forward(([prompt] + others).map { .init(cache: KVCache(config: m.config), tokens: $0, logits: .all) })
        for j in 0..<whole.count { XCTAssertEqual(batched[0][j], whole[j], accuracy: 1e-5) }
        for (k, a) in alone.enumerated() {
            XCTAssertEqual(batched[k + 1].count, a.count)
            for j in 0..<a.count { XCTAssertEqual(batched[k + 1][j], a[j], accuracy: 1e-5) }
        }
    }

    func testOutOfVocabularyTokenIsAnErrorNotACrash() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen2-tiny")).model
        XCTAssertThrowsError(try m.forward([.init(cache: KVCache(config: m.config), tokens: [1, Int32(m.config.vocabSize)])]))
        XCTAssertThrowsError(try m.forward([.init(cache: KVCache(config: m.config), tokens: [-1])]))
    }
}
