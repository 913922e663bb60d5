import Foundation
import QwenChat
import QwenFormats
import QwenGrammar
import QwenModel
import QwenTokenizer

/// One entry point per parser that reads untrusted bytes. Each must return or throw for any
/// input: a crash, a trap or a hang is a bug. `qwen-fuzz` drives them under libFuzzer (a
/// build with `-sanitize=fuzzer,address`, `make fuzz`) and replays saved inputs in an
/// ordinary build; the tests replay every saved input too.
public enum FuzzTargets {
    public static let names = ["safetensors", "gguf", "tokenizer", "jinja", "json", "request", "adapter-config", "schema", "regex"]

    /// A short random walk through a grammar: every byte it allows leads to a state that can
    /// go on or end (the invariant token masks rely on).
    static func walk(_ m: Matcher, seed: Int) {
        var s = m.start
        var x = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
        for _ in 0..<24 {
            let next = m.nextBytes(s)
            for b in next.prefix(8) {
                let t = m.advance(s, b)
                precondition(t.canContinue || t.canFinish, "an allowed byte led to a dead end")
            }
            guard !next.isEmpty else {
                precondition(s.canFinish, "a state with nothing to read cannot end")
                return
            }
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            s = m.advance(s, next[Int(x % UInt64(next.count))])
        }
    }

    /// Test fixtures (a tokenizer, an adapter's weights), found from this source file.
    public static var fixtures: String {
        ProcessInfo.processInfo.environment["QWEN_FUZZ_FIXTURES"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tests/Fixtures").standardized.path
    }

    /// Runs `name` on `data`. Errors thrown by the parsers are expected answers, not failures.
    public static func run(_ name: String, _ data: [UInt8]) {
        switch name {
        case "safetensors":
            withFile(data) { p in
                guard let f = try? SafetensorsFile(path: p) else { return }
                for n in f.tensorNames { _ = try? f.floats(n) }
            }
        case "gguf":
            withFile(data) { p in
                guard let g = try? GGUFFile(path: p) else { return }
                for n in g.tensorNames.prefix(4) { _ = try? g.floats(n) }
                _ = try? Tokenizer.load(gguf: g)
            }
        case "tokenizer":
            let text = String(decoding: data, as: UTF8.self)
            let ids = shared.tokenizer.encode(text)
            let back = shared.tokenizer.decode(ids)
            precondition(back == text.precomposedStringWithCanonicalMapping, "decode(encode(s)) != s")
            _ = shared.tokenizer.decode(data.map { Int32($0) * 97 })
        case "jinja":
            guard let t = try? JinjaTemplate(String(decoding: data, as: UTF8.self)) else { return }
            _ = try? t.render(["messages": .list([JinjaValue(JSONValue.object([("role", .string("user")), ("content", .string("hi"))]))]),
                               "add_generation_prompt": .bool(true)])
        case "json":
            guard let v = try? JSONValue.parse(data) else { return }
            let again = try? JSONValue.parse(Array(v.compact.utf8))
            precondition(again?.compact == v.compact, "JSON does not survive its own serialisation")
        case "request":
            // A chat request's body as the server reads it, rendered with a real chat template.
            guard let v = try? JSONValue.parse(data), let msgs = v["messages"]?.array else { return }
            _ = try? shared.template?.render(messages: msgs, tools: v["tools"]?.array, addGenerationPrompt: true,
                                             extra: v["chat_template_kwargs"]?.object ?? [])
        case "schema":
            // A response_format schema: compiled or refused, then a walk that must never reach a dead end.
            guard let v = try? JSONValue.parse(data), let g = try? SchemaCompiler.grammar(schema: v) else { return }
            walk(Matcher(g), seed: data.count)
        case "regex":
            guard let g = try? SchemaCompiler.regex(String(decoding: data, as: UTF8.self)) else { return }
            walk(Matcher(g), seed: data.count)
        case "adapter-config":
            let dir = NSTemporaryDirectory() + "qwen-fuzz-adapter-\(getpid())"
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            FileManager.default.createFile(atPath: dir + "/adapter_config.json", contents: Data(data))
            let weights = dir + "/adapter_model.safetensors"
            if !FileManager.default.fileExists(atPath: weights) {
                try? FileManager.default.copyItem(atPath: fixtures + "/adapters/qwen3-all/adapter_model.safetensors", toPath: weights)
            }
            _ = try? LoRAAdapter.load(path: dir, config: shared.config)
        default:
            fatalError("unknown fuzz target \(name); known: \(names.joined(separator: ", "))")
        }
    }

    /// Loads what the targets share, before the first input (so the leak checker does not
    /// count the one-time load against an input).
    public static func prepare() { _ = shared }

    /// Loaded once per process.
    struct Shared {
        let tokenizer: Tokenizer
        let template: ChatTemplate?
        let config: QwenConfig
    }

    static let shared: Shared = {
        let tok = try! Tokenizer.load(directory: fixtures + "/qwen3-tiny-f32")
        return Shared(tokenizer: tok, template: try! tok.chatTemplate.map(ChatTemplate.init),
                      config: try! QwenConfig.fromHuggingFace(path: fixtures + "/qwen3-tiny-f32/config.json"))
    }()

    static func withFile(_ data: [UInt8], _ body: (String) -> Void) {
        let p = "/dev/shm/qwen-fuzz-\(getpid())"
        guard FileManager.default.createFile(atPath: p, contents: Data(data)) else { return }
        body(p)
    }
}
