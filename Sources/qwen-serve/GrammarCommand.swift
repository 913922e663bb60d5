import ArgumentParser
import Foundation
import QwenChat
import QwenFormats
import QwenGrammar
import QwenRuntime
import QwenTokenizer

/// `qwen-serve grammar`: compiles an output constraint as the server would (a JSON Schema,
/// a regular expression, choices or tools) and reports a refusal as the server's 400 would;
/// prints random sentences of it (what the fuzz tests validate) and times token masks.
struct GrammarCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "grammar",
        abstract: "Compile a structured-output constraint; sample it; time its token masks.")

    @Option(help: "A JSON Schema file (as response_format's json_schema.schema).")
    var schema: String?
    @Option(help: "A regular expression the whole output must match (the `regex` field).")
    var regex: String?
    @Option(help: "An allowed output (repeat for each; the `choice` field).")
    var choice: [String] = []
    @Flag(name: .customLong("json-object"), help: "Any JSON object (response_format json_object).")
    var jsonObject = false
    @Option(help: "A JSON file with a list of tools (as the request's `tools`): output is tool calls.")
    var tools: String?
    @Flag(name: .customLong("no-parallel"), help: "With --tools: one call only.")
    var noParallel = false

    @Option(help: "Print this many random sentences, each as a JSON string on its own line.")
    var sample = 0
    @Option(help: "Random seed for --sample and --time-masks.")
    var seed: UInt64 = 0
    @Option(help: "A tokenizer (model directory, .gguf or `default`) for --time-masks.")
    var model: String?
    @Option(name: .customLong("time-masks"), help: "Walk this many random outputs token by token and time each step's mask.")
    var timeMasks = 0

    func run() throws {
        try reportingErrors {
            let grammar = try compile()
            let matcher = Matcher(grammar)
            var rng = SeededRandom(seed: seed)
            for _ in 0..<sample {
                guard let bytes = matcher.randomSentence(using: &rng) else { print("null"); continue }
                print(JSONValue.string(String(decoding: bytes, as: UTF8.self)).compact)
            }
            if timeMasks > 0 { try time(grammar, &rng) }
        }
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    func compile() throws -> Grammar {
        let given = [schema != nil, regex != nil, !choice.isEmpty, jsonObject, tools != nil].filter { $0 }.count
        guard given == 1 else { throw Failure(description: "give exactly one of --schema, --regex, --choice, --json-object, --tools") }
        func readJSON(_ path: String) throws -> JSONValue {
            let data: Data
            do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
                throw Failure(description: "\(path): cannot read it (\(error.localizedDescription))")
            }
            do { return try JSONValue.parse(Array(data)) } catch { throw Failure(description: "\(path): \(error)") }
        }
        do {
            if let schema { return try SchemaCompiler.grammar(schema: try readJSON(schema)) }
            if let regex { return try SchemaCompiler.regex(regex) }
            if !choice.isEmpty { return try SchemaCompiler.choice(choice) }
            if let tools {
                guard let list = try readJSON(tools).array else { throw Failure(description: "\(tools): expected a list of tools") }
                let t = try list.enumerated().map { i, v in
                    guard let tool = SchemaCompiler.Tool(openAI: v) else { throw Failure(description: "\(tools): tool \(i) has no function.name") }
                    return tool
                }
                return try SchemaCompiler.toolCalls(t, parallel: !noParallel)
            }
            return try SchemaCompiler.anyObject()
        } catch let r as SchemaCompiler.Refusal {
            throw Failure(description: "\(schema ?? tools ?? "the constraint"): not supported for constrained decoding: \(r.description)")
        }
    }

    /// Greedy-free walks over tokens: at each step the mask is computed (uncached, then cached),
    /// and a random allowed token taken.
    func time(_ grammar: Grammar, _ rng: inout SeededRandom) throws {
        let path = try ModelLocator.resolve(model ?? "default")
        var isDir: ObjCBool = false
        FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        let loaded = isDir.boolValue ? try Tokenizer.load(directory: path) : try Tokenizer.load(gguf: try GGUFFile(path: path))
        let started = Date()
        let vocab = TokenVocabulary(tokens: loaded.tokenBytes, excluded: Set(loaded.addedTokens.filter(\.special).map(\.id)),
                                    endIds: loaded.eosTokenIds, size: loaded.tokenBytes.count)
        log(String(format: "vocabulary trie: %.0f ms", Date().timeIntervalSince(started) * 1000))
        let c = TokenConstraint(grammar: grammar, vocabulary: vocab)
        var cold: [Double] = [], warm: [Double] = []
        var steps = 0
        for _ in 0..<timeMasks {
            var s = c.matcher.start
            for _ in 0..<400 {
                var t0 = Date()
                let m = c.computeMask(s)
                cold.append(Date().timeIntervalSince(t0))
                _ = c.mask(s)
                t0 = Date()
                _ = c.mask(s)
                warm.append(Date().timeIntervalSince(t0))
                steps += 1
                let allowed = (0..<vocab.size).filter { m.allows(Int32($0)) }
                if m.allowEnd && (allowed.isEmpty || Double.random(in: 0..<1, using: &rng) < 0.2) { break }
                guard let tok = allowed.randomElement(using: &rng), let next = c.advance(s, bytes: loaded.tokenBytes[tok]) else { break }
                s = next
            }
        }
        func stats(_ xs: [Double]) -> String {
            let s = xs.sorted()
            guard !s.isEmpty else { return "-" }
            return String(format: "median %.3f ms, p90 %.3f ms, max %.3f ms", s[s.count / 2] * 1000, s[s.count * 9 / 10] * 1000, s.last! * 1000)
        }
        print("steps: \(steps)")
        print("mask, computed: \(stats(cold))")
        print("mask, cached:   \(stats(warm))")
    }
}
