import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// LoRA adapters against transformers + PEFT on the tiny checkpoints
/// (scripts/make_fixtures.py writes adapters/ and expected/adapters.json).
final class LoRATests: XCTestCase {
    struct Case {
        let prompt: [Int32]
        let logits: [[Float]]
        let greedy: [Int32]
    }

    func cases(_ name: String) throws -> [Case] {
        let all = try XCTUnwrap(try Fixtures.json("expected/adapters.json") as? [String: Any])
        let list = try XCTUnwrap(all[name] as? [[String: Any]], "no expected logits for \(name)")
        return list.map { Case(prompt: ints32($0["prompt"]), logits: ($0["logits"] as! [Any]).map(floats), greedy: ints32($0["greedy"])) }
    }

    func maxDiff(_ got: [Float], _ rows: [[Float]]) -> Float {
        var d: Float = 0
        for (r, row) in rows.enumerated() { for (j, v) in row.enumerated() { d = max(d, abs(got[r * row.count + j] - v)) } }
        return d
    }

    func check(base: String, adapter: String, expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let loaded = try LoadedModel.load(path: Fixtures.path(base))
        let m = loaded.model
        let a = try LoRAAdapter.load(path: Fixtures.path("adapters/" + adapter), config: m.config)
        for c in try cases(expected) {
            let got = try m.forward([.init(cache: KVCache(config: m.config), tokens: c.prompt, logits: .all, adapter: a)])[0]
            XCTAssertEqual(got.count, c.logits.count * m.config.vocabSize, file: file, line: line)
            let d = maxDiff(got, c.logits)
            XCTAssertLessThanOrEqual(d, 1e-4, "\(adapter) on \(base): max |Δlogit| \(d)", file: file, line: line)
            let gen = try Generator(model: m, tokenizer: loaded.tokenizer, adapter: a)
                .generate(prompt: c.prompt, maxTokens: c.greedy.count, params: .greedy, ignoreEOS: true)
            XCTAssertEqual(gen.tokens, c.greedy, "\(adapter): greedy tokens differ from PEFT's", file: file, line: line)
            // The adapter must change something, or the comparison proves nothing.
            let plain = try m.forward([.init(cache: KVCache(config: m.config), tokens: c.prompt, logits: .all)])[0]
            XCTAssertGreaterThan(maxDiff(plain, c.logits), 1e-2, "\(adapter) barely changes the logits", file: file, line: line)
        }
    }

    func testPEFTAllProjections() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-all", expected: "qwen3-all") }
    func testPEFTRSLoRA() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-qv-rslora", expected: "qwen3-qv-rslora") }
    func testPEFTOneLayerMLP() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-mlp-last", expected: "qwen3-mlp-last") }
    func testPEFTOnQwen2WithBiases() throws { try check(base: "qwen2-tiny", adapter: "qwen2-attn", expected: "qwen2-attn") }
    func testMLXFormatMatchesPEFT() throws { try check(base: "qwen3-tiny-f32", adapter: "qwen3-all-mlx", expected: "qwen3-all") }
    /// The bf16 checkpoint holds the same values; its decode steps take the compact kernels.
    func testOnBF16Base() throws { try check(base: "qwen3-tiny-bf16", adapter: "qwen3-all", expected: "qwen3-all") }

    func testScalingAsEachFormatDefines() throws {
        let c = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen3-tiny-f32/config.json"))
        let rs = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-qv-rslora"), config: c)
        XCTAssertEqual(rs.update(layer: 0, .q)!.scale, Float(6.0 / 2.0.squareRoot()), accuracy: 1e-6)  // alpha / √r
        XCTAssertNil(rs.update(layer: 0, .k))
        let peft = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-all"), config: c)
        XCTAssertEqual(peft.update(layer: 1, .down)!.scale, 2)  // alpha / r
        XCTAssertEqual(peft.targetModules, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        let mlx = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-all-mlx"), config: c)
        XCTAssertEqual(mlx.format, "mlx")
        XCTAssertEqual(mlx.update(layer: 2, .gate)!.a.array, peft.update(layer: 2, .gate)!.a.array)
        let last = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-mlp-last"), config: c)
        XCTAssertNil(last.update(layer: 0, .down))
        XCTAssertNotNil(last.update(layer: 2, .down))
    }

    /// One forward step with rows for two adapters and the base, interleaved and of
    /// different lengths, gives each row what running it alone gives; then decode steps.
    func testMixedBatchMatchesSolo() throws { try mixedBatch("qwen3-tiny-f32", .f32) }

    /// The same over quantized weights in the int8 mode (adapters add their f32 updates).
    func testMixedBatchMatchesSoloInt8() throws { try mixedBatch("qwen3-tiny.gguf", .int8) }

    func mixedBatch(_ base: String, _ compute: ComputeMode) throws {
        let m = try LoadedModel.load(path: Fixtures.path(base), compute: compute).model
        let a = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-all"), config: m.config)
        let b = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-qv-rslora"), config: m.config)
        let prompts: [[Int32]] = [[5, 17, 300, 42, 9], [7, 8], [100, 200, 300, 400, 500, 11, 12], [3], [44, 45, 46]]
        let adapters: [LoRAAdapter?] = [a, nil, b, a, a]
        var solo: [[[Float]]] = []
        for (p, ad) in zip(prompts, adapters) {
            let cache = KVCache(config: m.config)
            var rows = [try m.forward([.init(cache: cache, tokens: p, logits: .last, adapter: ad)])[0]]
            for step in 0..<3 { rows.append(try m.forward([.init(cache: cache, tokens: [Int32(50 + step)], adapter: ad)])[0]) }
            solo.append(rows)
        }
        let caches = prompts.map { _ in KVCache(config: m.config) }
        var batched: [[[Float]]] = prompts.map { _ in [] }
        let first = try m.forward(zip(prompts, adapters).enumerated().map { i, pa in .init(cache: caches[i], tokens: pa.0, logits: .last, adapter: pa.1) })
        for i in prompts.indices { batched[i].append(first[i]) }
        for step in 0..<3 {
            let out = try m.forward(adapters.enumerated().map { i, ad in .init(cache: caches[i], tokens: [Int32(50 + step)], adapter: ad) })
            for i in prompts.indices { batched[i].append(out[i]) }
        }
        for i in prompts.indices {
            for s in 0..<4 {
                let d = zip(solo[i][s], batched[i][s]).map { abs($0 - $1) }.max()!
                XCTAssertLessThanOrEqual(d, 1e-4, "sequence \(i) step \(s): batched differs from solo by \(d)")
            }
        }
        XCTAssertGreaterThan(zip(solo[0][0], solo[3][0]).map { abs($0 - $1) }.max()!, 0)
    }

    /// Long prompts take the update through sgemm, decoding steps through the row kernel:
    /// a prompt of 80 tokens at once and in chunks of 16 give the same logits.
    func testPromptAtOnceEqualsPromptInChunks() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32")).model
        let a = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-all"), config: m.config)
        let prompt = (0..<80).map { Int32(($0 * 37 + 11) % m.config.vocabSize) }
        let whole = try m.forward([.init(cache: KVCache(config: m.config), tokens: prompt, logits: .last, adapter: a)])[0]
        let cache = KVCache(config: m.config)
        var last: [Float] = []
        for start in stride(from: 0, to: prompt.count, by: 16) {
            last = try m.forward([.init(cache: cache, tokens: Array(prompt[start..<(start + 16)]), logits: .last, adapter: a)])[0]
        }
        let d = zip(whole, last).map { abs($0 - $1) }.max()!
        XCTAssertLessThanOrEqual(d, 1e-4, "at once and in chunks differ by \(d)")
        let base = try m.forward([.init(cache: KVCache(config: m.config), tokens: prompt, logits: .last)])[0]
        XCTAssertGreaterThan(zip(whole, base).map { abs($0 - $1) }.max()!, 1e-3, "the adapter changes the logits")
    }

    func testMergedWeightsGiveUnmergedLogits() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-bf16")).model
        let a = try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-all"), config: m.config)
        let fused = QwenModel(config: m.config, weights: m.weights.merging(a))
        let p: [Int32] = [10, 20, 30, 40, 50, 60]
        let x = try m.forward([.init(cache: KVCache(config: m.config), tokens: p, logits: .all, adapter: a)])[0]
        let y = try fused.forward([.init(cache: KVCache(config: m.config), tokens: p, logits: .all)])[0]
        XCTAssertLessThanOrEqual(zip(x, y).map { abs($0 - $1) }.max()!, 1e-4)
    }

    // MARK: fuse

    func assertFusedMatches(base: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let out = try temporaryDirectory(self) + "/fused" + (base.hasSuffix(".gguf") ? ".gguf" : "")
        let adapterDir = Fixtures.path("adapters/qwen3-all")
        XCTAssertEqual(try Fuse.fuse(model: Fixtures.path(base), adapter: adapterDir, output: out), 21, file: file, line: line)
        let original = try LoadedModel.load(path: Fixtures.path(base))
        let fused = try LoadedModel.load(path: out)
        let a = try LoRAAdapter.load(path: adapterDir, config: original.model.config)
        let p: [Int32] = [10, 20, 30, 40, 50, 60, 5, 6]
        let x = try original.model.forward([.init(cache: KVCache(config: original.model.config), tokens: p, logits: .all, adapter: a)])[0]
        let y = try fused.model.forward([.init(cache: KVCache(config: fused.model.config), tokens: p, logits: .all)])[0]
        XCTAssertLessThanOrEqual(zip(x, y).map { abs($0 - $1) }.max()!, 1e-4, "\(base): fused logits differ", file: file, line: line)
        // The tokenizer and chat template came along.
        XCTAssertEqual(fused.tokenizer.encode("Hello, world!"), original.tokenizer.encode("Hello, world!"), file: file, line: line)
        XCTAssertEqual(fused.tokenizer.chatTemplate, original.tokenizer.chatTemplate, file: file, line: line)
        XCTAssertThrowsError(try Fuse.fuse(model: Fixtures.path(base), adapter: adapterDir, output: out), file: file, line: line) {
            XCTAssertTrue("\($0)".contains("already exists"), file: file, line: line)
        }
    }

    func testFuseHuggingFaceDirectory() throws { try assertFusedMatches(base: "qwen3-tiny-bf16") }
    func testFuseGGUF() throws { try assertFusedMatches(base: "qwen3-tiny.gguf") }

    func testFuseCommandNamesTheBadFile() throws {
        let out = try temporaryDirectory(self) + "/fused"
        let (status, _, err) = try runProcess(Fixtures.binary, ["fuse", "--model", Fixtures.path("qwen3-tiny-f32"),
                                                                "--adapter-path", Fixtures.path("adapters/qwen2-attn"), "--save-path", out])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("adapters/qwen2-attn/adapter_model.safetensors"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a failed fuse left output behind")
        XCTAssertTrue(try FileManager.default.contentsOfDirectory(atPath: (out as NSString).deletingLastPathComponent).isEmpty)
    }

    // MARK: refusals

    func copyAdapter(_ name: String, edit: (String) throws -> Void) throws -> String {
        let dir = try temporaryDirectory(self) + "/" + name
        try FileManager.default.copyItem(atPath: Fixtures.path("adapters/" + name), toPath: dir)
        try edit(dir)
        return dir
    }

    func editConfig(_ dir: String, _ change: (inout [String: Any]) -> Void) throws {
        let p = dir + "/adapter_config.json"
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
        change(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: p))
    }

    func assertRefused(_ path: String, config: QwenConfig, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LoRAAdapter.load(path: path, config: config), file: file, line: line) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains(fragment), "error \"\(text)\" does not mention \(fragment)", file: file, line: line)
            XCTAssertTrue(e is ModelFileError, file: file, line: line)
        }
    }

    func testRefusesWhatDoesNotFit() throws {
        let q3 = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen3-tiny-f32/config.json"))
        let q2 = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen2-tiny/config.json"))
        // Another model's adapter: other hidden size, and layer 2 does not exist in Qwen2-tiny.
        assertRefused(Fixtures.path("adapters/qwen2-attn"), config: q3, "expected [rank, 64]")
        assertRefused(Fixtures.path("adapters/qwen3-mlp-last"), config: q2, "layer 2, but the base model has 2 layers")
        assertRefused(Fixtures.path("adapters/qwen3-all-mlx"), config: q2, "the base model has 2 layers")
        // Missing, not a directory, or no config: one answer, which says nothing of what exists.
        assertRefused("/nonexistent/adapter", config: q3, "is not an adapter directory this server can read")
        assertRefused(Fixtures.path("qwen3-tiny-f32/config.json"), config: q3, "is not an adapter directory this server can read")
        assertRefused(Fixtures.path("qwen3-tiny-f32"), config: q3, "adapter_config.json")

        let dora = try copyAdapter("qwen3-all") { try editConfig($0) { $0["use_dora"] = true } }
        assertRefused(dora, config: q3, "DoRA")
        let saved = try copyAdapter("qwen3-all") { try editConfig($0) { $0["modules_to_save"] = ["lm_head"] } }
        assertRefused(saved, config: q3, "modules_to_save")
        let wrongRank = try copyAdapter("qwen3-all") { try editConfig($0) { $0["r"] = 8 } }
        assertRefused(wrongRank, config: q3, "says 8")
        let mlxRank = try copyAdapter("qwen3-all-mlx") { try editConfig($0) { $0["lora_parameters"] = ["rank": 2, "scale": 1.0] } }
        assertRefused(mlxRank, config: q3, "for this base model and rank")
        let mlxDora = try copyAdapter("qwen3-all-mlx") { try editConfig($0) { $0["fine_tune_type"] = "dora" } }
        assertRefused(mlxDora, config: q3, "fine_tune_type is dora")
        let noJSON = try copyAdapter("qwen3-all") { try "{not json".write(toFile: $0 + "/adapter_config.json", atomically: true, encoding: .utf8) }
        assertRefused(noJSON, config: q3, "not a JSON object")
        let truncated = try copyAdapter("qwen3-all") { dir in
            let p = dir + "/adapter_model.safetensors"
            let d = try Data(contentsOf: URL(fileURLWithPath: p))
            try d.prefix(d.count / 2).write(to: URL(fileURLWithPath: p))
        }
        assertRefused(truncated, config: q3, "adapter_model.safetensors")
    }
}
