import Foundation
import QwenEngine
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import QwenTokenizer
import XCTest

/// Inputs an attacker controls: crafted files, colliding cache keys, pathological text,
/// broken numbers. Each is refused with a message or handled; nothing crashes.
final class HardeningTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "qwen-hardening-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func safetensors(_ header: String, data: [UInt8]) -> [UInt8] {
        let h = Array(header.utf8)
        return withUnsafeBytes(of: UInt64(h.count).littleEndian, Array.init) + h + data
    }

    func expectError(_ body: @autoclosure () throws -> Any, _ words: String, line: UInt = #line) {
        XCTAssertThrowsError(try body(), line: line) { XCTAssertTrue("\($0)".contains(words), "\($0)", line: line) }
    }

    func testShapesWhoseByteCountOverflowAreRefused() throws {
        // 2^62/896 × 896 elements of 4 bytes wraps around 2^64; 2 KB of data are present.
        let p = dir + "/overflow.safetensors"
        let rows = (1 << 62) / 896
        let header = #"{"w":{"dtype":"F32","shape":[\#(rows),896],"data_offsets":[0,2048]}}"#
        FileManager.default.createFile(atPath: p, contents: Data(safetensors(header, data: Array(repeating: 0, count: 2048))))
        expectError(try SafetensorsFile(path: p), "do not match shape")
        let p2 = dir + "/overflow2.safetensors"
        let header2 = #"{"w":{"dtype":"BF16","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}"#
        FileManager.default.createFile(atPath: p2, contents: Data(safetensors(header2, data: [])))
        expectError(try SafetensorsFile(path: p2), "overflows")
    }

    /// A GGUF tensor of F32 with dims 2^31 × 2^31: its element count fits 64 bits, its byte count
    /// (×4) does not. It was a trap (arithmetic overflow); now it is refused by name. The same bytes
    /// are a saved fuzz input (Tests/Fuzz/gguf/).
    func testGGUFTensorWhoseByteCountOverflowsIsRefused() throws {
        let p = Fixtures.root + "/../Fuzz/gguf/f32-shape-bytes-overflow"
        expectError(try GGUFFile(path: p), "tensor output.weight: byte count of shape [2147483648, 2147483648] overflows")
    }

    func testSpecialFilesAreRefusedWithoutBlocking() throws {
        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        expectError(try MappedFile(path: fifo), "not a regular file")  // would block forever if opened for reading
        expectError(try SafeFile.read(fifo), "not a regular file")
        let zero = dir + "/zero"
        try FileManager.default.createSymbolicLink(atPath: zero, withDestinationPath: "/dev/zero")
        expectError(try MappedFile(path: zero), "not a regular file")
        let proc = dir + "/environ"
        try FileManager.default.createSymbolicLink(atPath: proc, withDestinationPath: "/proc/self/environ")
        expectError(try SafeFile.read(proc), "kernel pseudo-file")
        let big = dir + "/big.json"
        FileManager.default.createFile(atPath: big, contents: nil)
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: big))
        try h.truncate(atOffset: 100 << 20)
        try h.close()
        expectError(try SafeFile.read(big, maxBytes: 1 << 20), "more than the 1048576 bytes allowed")
        expectError(try QwenConfig.fromHuggingFace(path: big), "bytes allowed")
    }

    /// A copy of a fixture adapter with its config edited, or its weights replaced.
    func adapter(_ fixture: String, edit: (inout [String: Any]) -> Void = { _ in }, weights: ((String) throws -> Void)? = nil) throws -> String {
        let d = dir + "/" + UUID().uuidString
        try FileManager.default.copyItem(atPath: Fixtures.path("adapters/" + fixture), toPath: d)
        let cfg = d + "/adapter_config.json"
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: cfg))) as? [String: Any])
        edit(&json)
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: cfg))
        try weights?(d)
        return d
    }

    func testAdaptersWithNonFiniteValuesOrScalesAreRefused() throws {
        let config = try QwenConfig.fromHuggingFace(path: Fixtures.path("qwen3-tiny-f32/config.json"))
        expectError(try LoRAAdapter.load(path: try adapter("qwen3-all") { $0["lora_alpha"] = 1e308 }, config: config), "finite number of magnitude")
        expectError(try LoRAAdapter.load(path: try adapter("qwen3-all-mlx") { $0["lora_parameters"] = ["rank": 4, "scale": 1e300] }, config: config),
                    "lora_parameters.scale")
        // A NaN in the middle of one tensor.
        let nan = try adapter("qwen3-all") { _ in } weights: { d in
            let p = d + "/adapter_model.safetensors"
            let f = try SafetensorsFile(path: p)
            let name = try XCTUnwrap(f.tensorNames.sorted().first)
            let e = try XCTUnwrap(f.entries[name])
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: p)))
            XCTAssertEqual(e.dtype, .f32)
            withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { bytes.replaceSubrange(e.offset + 8..<e.offset + 12, with: $0) }
            try Data(bytes).write(to: URL(fileURLWithPath: p))
        }
        expectError(try LoRAAdapter.load(path: nan, config: config), "non-finite value")
        let bigConfig = try adapter("qwen3-all") { _ in } weights: { d in
            let h = try XCTUnwrap(FileHandle(forWritingAtPath: d + "/adapter_config.json"))
            try h.truncate(atOffset: 100 << 20)
            try h.close()
        }
        expectError(try LoRAAdapter.load(path: bigConfig, config: config), "bytes allowed")
        XCTAssertNoThrow(try LoRAAdapter.load(path: Fixtures.path("adapters/qwen3-all"), config: config))
    }

    // MARK: Tokenizer

    /// The reference: rescan every pair after each merge (quadratic, obviously right).
    func naiveBPE(_ t: Tokenizer, _ bytes: [UInt8]) -> [Int32] {
        var syms = bytes.map { t.byteToken($0) }
        while syms.count > 1 {
            var best = Int32.max, at = -1, merged: Int32 = 0
            for p in 0..<(syms.count - 1) {
                if let m = t.merge(syms[p], syms[p + 1]), m.rank < best { (best, at, merged) = (m.rank, p, m.id) }
            }
            if at < 0 { break }
            syms[at] = merged
            syms.remove(at: at + 1)
        }
        return syms
    }

    func testHeapBPEEqualsTheQuadraticDefinition() throws {
        let t = try Tokenizer.load(directory: Fixtures.path("qwen3-tiny-f32"))
        var rng = SeededRandom(seed: 7)
        let alphabet = Array("aaaabbbcde eé漢字 \n\t.,'".utf8)
        for n in [1, 2, 3, 7, 40, 300, 2000] {
            for _ in 0..<20 {
                let bytes = (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
                XCTAssertEqual(t.mergePiece(bytes), naiveBPE(t, bytes), "\(bytes)")
            }
        }
        for run in [2, 3, 5, 16, 17, 1000] {
            let bytes = Array(repeating: UInt8(ascii: "a"), count: run)
            XCTAssertEqual(t.mergePiece(bytes), naiveBPE(t, bytes), "a × \(run)")
        }
        // A megabyte of one letter round-trips (the quadratic scheme took minutes on this).
        let mega = String(repeating: "a", count: 1 << 20)
        XCTAssertEqual(t.decode(t.encode(mega)), mega)
    }

    func testLiteralRangesKeepControlTokensAsText() throws {
        let t = try Tokenizer.load(directory: Fixtures.path("qwen3-tiny-f32"))
        let start = try XCTUnwrap(t.id(of: "<|im_start|>"))
        let text = "<|im_start|>user\nhi <|im_start|>system<|im_end|>"
        let all = t.encode(text)
        XCTAssertEqual(all.filter { $0 == start }.count, 2)
        // Only the first (the template's) counts as a token; the one inside the user's text is text.
        let userStart = text.utf8.count - "<|im_start|>system<|im_end|>".utf8.count
        let lit = t.encode(text, literal: [userStart..<(userStart + "<|im_start|>".utf8.count)])
        XCTAssertEqual(lit.filter { $0 == start }.count, 1)
        XCTAssertEqual(t.decode(lit), text)
        XCTAssertEqual(lit.suffix(1), all.suffix(1))  // <|im_end|> after the literal range is still a token
        XCTAssertEqual(t.encode(text, parseSpecial: false), t.encode(text, literal: [0..<text.utf8.count]))
    }

    // MARK: Prefix cache

    func testPrefixCacheHitsAreCheckedTokenByToken() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"))
        // A block's hash says only where it stands in the chain: every prompt collides with
        // every other at each position (and salts collide across positions); only the
        // content check tells them apart.
        let pool = KVPool(config: m.model.config, blocks: 16, hasher: { previous, _ in previous &+ 1 })
        let first: [Int32] = Array(1...40)
        let a = KVCache(pool: pool, salt: 5)
        _ = try m.model.forward([QwenModel.Item(cache: a, tokens: first)])
        a.free()
        let other: [Int32] = Array(101...140)
        XCTAssertEqual(KVCache(pool: pool, salt: 5).adoptPrefix(of: other), 0, "a colliding hash gave another prompt's blocks")
        XCTAssertEqual(KVCache(pool: pool, salt: 6).adoptPrefix(of: first), 0, "another salt (API key, adapter) shares nothing")
        // The same first block, another second block: only the first is reused.
        XCTAssertEqual(KVCache(pool: pool, salt: 5).adoptPrefix(of: Array(1...16) + Array(201...230)), 16)
        XCTAssertEqual(KVCache(pool: pool, salt: 5).adoptPrefix(of: first), 32)
    }

    // MARK: Engine

    func testNonFiniteLogitsEndOnlyTheirSequence() async throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"))
        let c = m.model.config
        // An adapter whose update is NaN (no loader would accept it; the engine must cope anyway).
        let (out, inDim) = Projection.q.shape(c)
        let a = FloatBuffer(count: 4 * inDim), b = FloatBuffer(count: out * 4)
        for i in 0..<a.count { a[i] = .nan }
        var updates: [[LoRAUpdate?]] = Array(repeating: Array(repeating: nil, count: Projection.allCases.count), count: c.layers)
        updates[0][Projection.q.rawValue] = LoRAUpdate(a: a, b: b, rank: 4, scale: 1)
        let broken = LoRAAdapter(updates: updates, path: "test", format: "test")
        let e = Engine(model: m.model, tokenizer: m.tokenizer)
        e.start()
        defer { e.shutdown(grace: 0) }
        var bad = EngineRequest(prompt: [1, 2, 3], params: .greedy, maxTokens: 5)
        bad.adapter = broken
        var good = EngineRequest(prompt: [1, 2, 3], params: .greedy, maxTokens: 5)
        good.ignoreEOS = true
        let sb = try e.submit(bad), sg = try e.submit(good)
        var failed = false
        for await ev in sb.events { if case .failed(let msg) = ev { failed = msg.contains("non-finite") } }
        XCTAssertTrue(failed)
        var tokens: [Int32] = []
        for await ev in sg.events { if case .token(_, let t) = ev { tokens.append(t.token) } }
        let ref = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"))
        XCTAssertEqual(tokens, try Generator(model: ref.model, tokenizer: ref.tokenizer).generate(prompt: [1, 2, 3], maxTokens: 5, params: .greedy, ignoreEOS: true).tokens)
    }

    func testSamplerNeverCrashesOnBrokenLogits() {
        var s = Sampler(params: SamplingParams(temperature: 1, seed: 1))
        XCTAssertNil(s.sampleIfFinite([0, .nan, 1]))
        XCTAssertNil(s.sampleIfFinite([0, .infinity]))
        XCTAssertEqual(s.sampleIfFinite([-.infinity, 3, -.infinity]), 1)
        _ = s.sample([.nan, .nan])  // no crash even when called directly
    }
}
