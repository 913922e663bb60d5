import CQwenKernels
import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import QwenTokenizer
import XCTest

/// `qwen-serve quantize`: a checkpoint written as a GGUF is the same model as the checkpoint
/// quantized at load — same hyper-parameters, tokenizer, chat template and blocks, so the same
/// logits bit for bit — for both architectures, and bad input is refused by name.
final class GGUFExportTests: XCTestCase {
    func testWrittenGGUFIsTheModelQuantizedAtLoad() throws {
        let dir = try temporaryDirectory(self)
        let cases: [(String, QuantizeType)] = [("qwen3-tiny-bf16", .q8_0), ("qwen3-tiny-f32", .q4_0), ("qwen3-tiny-f32", .q4_k), ("qwen2-tiny", .q8_0)]
        for (fixture, type) in cases {
            let out = "\(dir)/\(fixture)-\(type.rawValue).gguf"
            let summary = try GGUFExport.quantize(model: Fixtures.path(fixture), type: type, to: out)
            let fromDir = try LoadedModel.load(path: Fixtures.path(fixture), choice: .f32, quantize: type)
            let fromFile = try LoadedModel.load(path: out, choice: .f32)
            XCTAssertEqual(fromFile.model.config, fromDir.model.config, fixture)

            // The blocks the file holds are the ones quantizing at load makes.
            let g = try GGUFFile(path: out)
            XCTAssertEqual(g.tensorNames.count, summary.tensors)
            let q = try XCTUnwrap(g.tensors["model.layers.0.self_attn.q_proj.weight"])
            let expected: GGMLType = fixture == "qwen2-tiny" ? .f32 : type == .q4_0 ? .q4_0 : .q8_0  // 48- and 64-wide rows
            XCTAssertEqual(q.type, expected, "\(fixture) \(type)")
            XCTAssertEqual(summary.quantized, fixture == "qwen2-tiny" ? 0 : g.tensors.values.filter { $0.type != .f32 }.count)

            let a = fromDir.tokenizer, b = fromFile.tokenizer
            XCTAssertEqual(a.vocabularySize, b.vocabularySize)
            XCTAssertEqual(a.tokenBytes, b.tokenBytes)
            XCTAssertEqual(a.chatTemplate, b.chatTemplate)
            XCTAssertEqual(a.addedTokens.map(\.id), b.addedTokens.map(\.id))
            XCTAssertEqual(a.addedTokens.map(\.special), b.addedTokens.map(\.special))
            XCTAssertTrue(a.eosTokenIds.isSubset(of: b.eosTokenIds), "\(a.eosTokenIds) ⊄ \(b.eosTokenIds)")
            for text in ["Hello, world!", "  indented\n\tcode() {}", "中文和 emoji 🙂", "<|im_start|>user\nhi<|im_end|>", "ÀÉÎõü 12345"] {
                XCTAssertEqual(a.encode(text), b.encode(text), text)
            }

            let prompt = a.encode("The quick brown fox jumps over the lazy dog")
            func logits(_ m: QwenModel) throws -> [Float] {
                try m.forward([.init(cache: KVCache(config: m.config), tokens: prompt, logits: .all)])[0]
            }
            XCTAssertEqual(try logits(fromFile.model).map(\.bitPattern), try logits(fromDir.model).map(\.bitPattern), "\(fixture) \(type)")
        }
    }

    /// Metadata keys and types as llama.cpp's loader reads them (it rejects a wrong type).
    func testMetadataKeys() throws {
        let out = try temporaryDirectory(self) + "/m.gguf"
        try GGUFExport.quantize(model: Fixtures.path("qwen3-tiny-bf16"), type: .q8_0, to: out, name: "tiny")
        let g = try GGUFFile(path: out)
        let config = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen3-tiny-bf16") + "/config.json")
        XCTAssertEqual(g.architecture, "qwen3")
        XCTAssertEqual(g.metadata["general.name"]?.string, "tiny")
        XCTAssertEqual(g.metadata["general.file_type"]?.int, 7)
        XCTAssertEqual(g.metadata["qwen3.block_count"]?.int, config.layers)
        XCTAssertEqual(g.metadata["qwen3.attention.key_length"]?.int, config.headDim)
        XCTAssertEqual(g.metadata["tokenizer.ggml.tokens"]?.array?.count, config.vocabSize)
        XCTAssertEqual(g.metadata["tokenizer.ggml.token_type"]?.array?.count, config.vocabSize)
        XCTAssertEqual(g.metadata["tokenizer.ggml.pre"]?.string, "qwen2")
        XCTAssertNotNil(g.metadata["tokenizer.ggml.eos_token_id"]?.int)
        XCTAssertEqual(try GGUFReaderTypes.types(of: out)["qwen3.block_count"], 4, "u32")
        XCTAssertEqual(try GGUFReaderTypes.types(of: out)["qwen3.rope.freq_base"], 6, "f32")
    }

    func testBadInputIsRefusedByName() throws {
        let dir = try temporaryDirectory(self)
        let existing = dir + "/exists.gguf"
        FileManager.default.createFile(atPath: existing, contents: Data("keep me".utf8))
        XCTAssertThrowsError(try GGUFExport.quantize(model: Fixtures.path("qwen3-tiny-bf16"), type: .q8_0, to: existing)) {
            XCTAssertTrue("\($0)".contains("already exists"), "\($0)")
        }
        XCTAssertEqual(try String(contentsOfFile: existing, encoding: .utf8), "keep me")
        // The default model's matrices are all blocks already (the tiny GGUF still has f16 ones, which would be quantized).
        let quantized = try Fixtures.defaultModel()
        XCTAssertThrowsError(try GGUFExport.quantize(model: quantized, type: .q8_0, to: dir + "/a.gguf")) {
            XCTAssertTrue("\($0)".contains(quantized) && "\($0)".contains("already quantized"), "\($0)")
        }
        // A checkpoint with a tensor GGUF has no name for.
        let odd = dir + "/odd"
        try FileManager.default.copyItem(atPath: Fixtures.path("qwen3-tiny-bf16"), toPath: odd)
        let src = try SafetensorsDirectory(directory: Fixtures.path("qwen3-tiny-bf16"))
        let tensors = src.tensorNames.map { n in SafetensorsWriter.Tensor(name: n, shape: src.shape(of: n)!) { try src.floats(n) } }
        try SafetensorsWriter.write(tensors + [.init(name: "model.extra.weight", shape: [2, 2]) { FloatBuffer([1, 2, 3, 4]) }],
                                    dtype: .f32, to: odd + "/model.safetensors")
        XCTAssertThrowsError(try GGUFExport.quantize(model: odd, type: .q8_0, to: dir + "/b.gguf")) {
            XCTAssertTrue("\($0)".contains("model.extra.weight"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/a.gguf"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/b.gguf"))
    }
}

extension GGUFExportTests {
    /// A GGUF with float matrices (f32 here, as `fuse` or convert_hf_to_gguf --outtype f32 write)
    /// is quantized too: its metadata copied entry by entry with the new file type, its blocks
    /// those --quantize makes from it at load, so the same logits bit for bit.
    func testFloatGGUFIsQuantized() throws {
        let dir = try temporaryDirectory(self)
        let src = try GGUFFile(path: Fixtures.path("qwen3-tiny.gguf"))
        var replacing: [String: FloatBuffer] = [:]
        for name in src.tensorNames where src.shape(of: name)?.count == 2 { replacing[name] = try src.floats(name) }
        let f32 = dir + "/f32.gguf", out = dir + "/q8.gguf"
        try GGUFWriter.rewrite(src, replacing: replacing, to: f32)
        let s = try GGUFExport.quantize(model: f32, type: .q8_0, to: out)
        XCTAssertEqual(s.quantized, replacing.count)
        let a = try GGUFFile(path: f32), b = try GGUFFile(path: out)
        XCTAssertEqual(b.metadata["general.file_type"]?.int, 7)
        XCTAssertEqual(Set(b.metadata.keys), Set(a.metadata.keys).union(["general.file_type", "general.quantization_version"]))
        for (k, v) in a.metadata where k != "general.file_type" && k != "general.quantization_version" {
            XCTAssertEqual("\(b.metadata[k]!)", "\(v)", k)
        }
        XCTAssertEqual(try GGUFReaderTypes.types(of: out).filter { $0.key != "general.file_type" && $0.key != "general.quantization_version" },
                       try GGUFReaderTypes.types(of: f32).filter { $0.key != "general.file_type" && $0.key != "general.quantization_version" })
        let fromFile = try LoadedModel.load(path: out, choice: .f32), atLoad = try LoadedModel.load(path: f32, choice: .f32, quantize: .q8_0)
        let prompt = atLoad.tokenizer.encode("A float GGUF, quantized")
        func logits(_ m: QwenModel) throws -> [Float] { try m.forward([.init(cache: KVCache(config: m.config), tokens: prompt, logits: .all)])[0] }
        XCTAssertEqual(try logits(fromFile.model).map(\.bitPattern), try logits(atLoad.model).map(\.bitPattern))
    }
}

/// The stored type of each metadata value (GGUF's type numbers), read straight from the bytes:
/// GGUFFile keeps values, not their widths.
enum GGUFReaderTypes {
    static func types(of path: String) throws -> [String: UInt32] {
        let d = try Data(contentsOf: URL(fileURLWithPath: path))
        var o = 8
        func u32() -> UInt32 { defer { o += 4 }; return d[o..<o + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }
        func u64() -> Int { defer { o += 8 }; return Int(d[o..<o + 8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }) }
        func str() -> String { let n = u64(); defer { o += n }; return String(decoding: d[o..<o + n], as: UTF8.self) }
        func skip(_ t: UInt32) {
            switch t {
            case 0, 1, 7: o += 1
            case 2, 3: o += 2
            case 4, 5, 6: o += 4
            case 8: _ = str()
            case 9: let et = u32(); let n = u64(); for _ in 0..<n { skip(et) }
            default: o += 8
            }
        }
        _ = u64()
        let kv = u64()
        var out: [String: UInt32] = [:]
        for _ in 0..<kv {
            let k = str()
            let t = u32()
            out[k] = t
            skip(t)
        }
        return out
    }
}

extension GGUFExportTests {
    /// The real 151,936-id vocabulary (151,665 tokens, its merges, control and user-defined
    /// added tokens) written as GGUF arrays reads back as the same tokenizer.
    func testRealVocabularyRoundTrips() throws {
        let original = try Tokenizer.load(gguf: try GGUFFile(path: try Fixtures.defaultModel()))
        let size = 151_936
        let v = try XCTUnwrap(original.ggufVocabulary(size: size))
        XCTAssertNil(original.ggufVocabulary(size: original.vocabularySize - 1))
        let out = try temporaryDirectory(self) + "/vocab.gguf"
        try GGUFWriter.write(metadata: [("general.architecture", .string("qwen2")), ("tokenizer.ggml.model", .string("gpt2")),
                                        ("tokenizer.ggml.pre", .string("qwen2")), ("tokenizer.ggml.tokens", .strings(v.tokens)),
                                        ("tokenizer.ggml.token_type", .i32s(v.types)), ("tokenizer.ggml.merges", .strings(v.merges))],
                             tensors: [], to: out)
        let back = try Tokenizer.load(gguf: try GGUFFile(path: out))
        XCTAssertEqual(original.vocabularySize, 151_665, "the file's 271 unused [PAD] ids are no tokens")
        XCTAssertEqual(original.decode([151_700, 9707]), "Hello", "an unused id decodes to nothing, as in llama.cpp")
        XCTAssertEqual(back.tokenBytes, original.tokenBytes)
        XCTAssertEqual(back.addedTokens.map(\.content), original.addedTokens.map(\.content))
        XCTAssertEqual(back.addedTokens.map(\.special), original.addedTokens.map(\.special))
        XCTAssertEqual(v.types.filter { $0 == 5 }.count, size - original.vocabularySize)
        let text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 斐波那契 <tool_call>{\"a\": 1}</tool_call><|im_end|>  \r\n"
        XCTAssertEqual(back.encode(text), original.encode(text))
        XCTAssertEqual(back.encode(String(repeating: "antidisestablishmentarianism ", count: 3)),
                       original.encode(String(repeating: "antidisestablishmentarianism ", count: 3)))
    }
}
