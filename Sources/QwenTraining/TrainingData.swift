import Foundation
import QwenChat
import QwenFormats
import QwenModel
import QwenTokenizer

/// One training example: its tokens and the index of its first trained target (0: all).
public struct Example: Sendable, Equatable {
    public var tokens: [Int32]
    public var offset: Int
    /// Per token: trained or not (assistant turns by weight); nil trains from `offset` on.
    public var mask: [Bool]?

    public init(tokens: [Int32], offset: Int, mask: [Bool]? = nil) {
        self.tokens = tokens
        self.offset = offset
        self.mask = mask
    }
}

/// A JSONL data set as mlx_lm.lora reads it: `{"messages": [...]}` chats (rendered with the
/// model's own chat template, `tools` passed through), `{"prompt", "completion"}` pairs (a user
/// turn and the assistant's answer) or `{"text"}`. Every line is checked before anything is
/// trained; the first bad line stops the run with its file, line number and what is wrong.
public struct TrainingData {
    public struct DataError: Error, CustomStringConvertible {
        public let description: String
    }

    /// How each line is turned into tokens.
    public struct Format: Sendable {
        public var maskPrompt = false
        public var promptFeature = "prompt", completionFeature = "completion", textFeature = "text", chatFeature = "messages"
        /// The OpenAI fine-tuning rules: every assistant turn is trained unless its `weight` is 0
        /// (otherwise mask_prompt's: only the last turn, or all tokens).
        public var assistantWeights = false
        public init() {}
    }

    static let roles: Set<String> = ["system", "developer", "user", "assistant", "tool", "function"]
    /// Bytes of one line (a chat of 1 MiB is far past any sequence length trained here).
    static let maxLineBytes = 8 << 20

    /// Checks every line of `file` and reports every problem (up to `maxProblems`), each as
    /// "line N: what is wrong"; returns the examples' count and longest token length.
    public static func check(file: String, tokenizer: Tokenizer, format: Format, maxProblems: Int = 20)
        -> (examples: Int, maxTokens: Int, problems: [String]) {
        var problems: [String] = []
        var count = 0, longest = 0
        do {
            try load(file: file, tokenizer: tokenizer, format: format) { result, line in
                switch result {
                case .success(let e):
                    count += 1
                    longest = max(longest, e.tokens.count)
                case .failure(let e):
                    if problems.count < maxProblems { problems.append("line \(line): \(e.description)") }
                }
            }
        } catch {
            problems.append("\(error)")
        }
        if count == 0 && problems.isEmpty { problems.append("the file holds no examples") }
        return (count, longest, problems)
    }

    /// Reads and tokenises `file`. Lines that are empty are skipped; any other bad line throws.
    public static func load(file: String, tokenizer: Tokenizer, format: Format) throws -> [Example] {
        var out: [Example] = []
        try load(file: file, tokenizer: tokenizer, format: format) { result, line in
            switch result {
            case .success(let e): out.append(e)
            case .failure(let e): throw DataError(description: "\(file):\(line): \(e.description)")
            }
        }
        guard !out.isEmpty else { throw DataError(description: "\(file): no examples (the file is empty)") }
        return out
    }

    /// Each non-blank line's example or problem, in order, to `each` (which may throw to stop).
    static func load(file: String, tokenizer: Tokenizer, format: Format,
                     each: (Result<Example, DataError>, Int) throws -> Void) throws {
        let bytes: [UInt8]
        do {
            bytes = [UInt8](try SafeFile.read(file, maxBytes: 4 << 30))
        } catch {
            throw DataError(description: "\(file): \(error)")
        }
        let template = try tokenizer.chatTemplate.map { src -> ChatTemplate in
            do { return try ChatTemplate(src) } catch { throw DataError(description: "\(file): the model's chat template does not parse: \(error)") }
        }
        var special: [String: String] = [:]
        if let e = tokenizer.eosTokenIds.sorted().first { special["eos_token"] = tokenizer.decode([e]) }
        if let b = tokenizer.bosTokenId { special["bos_token"] = tokenizer.decode([b]) }
        var lineNo = 0
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            lineNo += 1
            defer { start = end + 1 }
            var line = Array(bytes[start..<end])
            if line.last == 0x0D { line.removeLast() }
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            func fail(_ m: String) -> Result<Example, DataError> { .failure(DataError(description: m)) }
            guard line.count <= maxLineBytes else { try each(fail("line longer than \(maxLineBytes >> 20) MiB"), lineNo); continue }
            let value: JSONValue
            do { value = try JSONValue.parse(line) } catch { try each(fail("not JSON: \(error)"), lineNo); continue }
            guard case .object = value else { try each(fail("each line must be a JSON object"), lineNo); continue }
            do {
                try each(.success(try example(value, tokenizer: tokenizer, template: template, special: special, format: format)), lineNo)
            } catch let e as DataError where !e.description.hasPrefix(file) {
                try each(.failure(e), lineNo)
            }
        }
    }

    static func example(_ v: JSONValue, tokenizer: Tokenizer, template: ChatTemplate?, special: [String: String],
                        format f: Format) throws -> Example {
        func fail(_ m: String) -> DataError { DataError(description: m) }
        func render(_ messages: [JSONValue], tools: [JSONValue]?, generationPrompt: Bool) throws -> [Int32] {
            guard let template else {
                let text = messages.map { "<|im_start|>\($0["role"]?.string ?? "")\n\($0["content"]?.string ?? "")<|im_end|>\n" }.joined()
                    + (generationPrompt ? "<|im_start|>assistant\n" : "")
                return tokenizer.encode(text)
            }
            do {
                let text = try template.render(messages: messages, tools: tools, addGenerationPrompt: generationPrompt, specialTokens: special)
                return tokenizer.encode(text)
            } catch {
                throw fail("the chat template could not render this chat: \(error)")
            }
        }
        if let chat = v[f.chatFeature] {
            guard let messages = chat.array, !messages.isEmpty else { throw fail("\"\(f.chatFeature)\" must be a non-empty list of messages") }
            var tools: [JSONValue]?
            if let t = v["tools"], t != .null {
                guard let a = t.array else { throw fail("\"tools\" must be a list") }
                tools = a
            }
            var assistants: [Int] = []
            for (i, m) in messages.enumerated() {
                guard case .object = m else { throw fail("message \(i) is not an object") }
                guard let role = m["role"]?.string else { throw fail("message \(i) has no \"role\"") }
                guard roles.contains(role) else { throw fail("message \(i) has the unknown role \"\(role)\"") }
                let content = m["content"]
                let hasCalls = m["tool_calls"]?.array.map { !$0.isEmpty } ?? false
                switch content {
                case .some(.string): break
                case .some(.array): break
                case .none, .some(.null):
                    guard role == "assistant", hasCalls else { throw fail("message \(i) (\(role)) has no \"content\"") }
                default: throw fail("message \(i): \"content\" must be a string or a list of parts")
                }
                if let w = m["weight"] {
                    guard role == "assistant" else { throw fail("message \(i): only assistant messages take a \"weight\"") }
                    guard w == .int(0) || w == .int(1) else { throw fail("message \(i): \"weight\" must be 0 or 1") }
                }
                if role == "assistant" { assistants.append(i) }
            }
            guard let lastAssistant = assistants.last else { throw fail("the chat has no assistant message to train on") }
            let tokens = try render(messages, tools: tools, generationPrompt: false)
            if f.assistantWeights {
                // Each assistant turn whose weight is not 0: its tokens, from where the template's
                // generation prompt ends to the end of the turn as rendered.
                let trained = assistants.filter { messages[$0]["weight"] != .int(0) }
                guard !trained.isEmpty else { throw fail("every assistant message has weight 0: nothing to train") }
                var mask = [Bool](repeating: false, count: tokens.count)
                for i in trained {
                    let before = commonPrefix(try render(Array(messages[..<i]), tools: tools, generationPrompt: true), tokens)
                    let through = commonPrefix(try render(Array(messages[...i]), tools: tools, generationPrompt: false), tokens)
                    for j in before..<max(before, through) { mask[j] = true }
                }
                return Example(tokens: tokens, offset: 0, mask: mask)
            }
            guard f.maskPrompt else { return Example(tokens: tokens, offset: 0) }
            guard lastAssistant == messages.count - 1 else {
                throw fail("mask_prompt trains the last assistant turn, but the chat does not end with one")
            }
            let prefix = try render(Array(messages.dropLast()), tools: tools, generationPrompt: true)
            return Example(tokens: tokens, offset: commonPrefix(prefix, tokens))
        }
        if v[f.promptFeature] != nil || v[f.completionFeature] != nil {
            guard let p = v[f.promptFeature]?.string else { throw fail("\"\(f.promptFeature)\" must be a string") }
            guard let c = v[f.completionFeature]?.string else { throw fail("\"\(f.completionFeature)\" must be a string") }
            let messages: [JSONValue] = [.object([("role", .string("user")), ("content", .string(p))]),
                                         .object([("role", .string("assistant")), ("content", .string(c))])]
            let tools = v["tools"]?.array
            let tokens = try render(messages, tools: tools, generationPrompt: false)
            guard f.maskPrompt || f.assistantWeights else { return Example(tokens: tokens, offset: 0) }
            let prefix = try render(Array(messages.prefix(1)), tools: tools, generationPrompt: true)
            return Example(tokens: tokens, offset: commonPrefix(prefix, tokens))
        }
        if let t = v[f.textFeature] {
            guard let text = t.string, !text.isEmpty else { throw fail("\"\(f.textFeature)\" must be a non-empty string") }
            var tokens = tokenizer.encode(text)
            if let eos = tokenizer.eosTokenIds.sorted().first, tokens.last != eos { tokens.append(eos) }
            return Example(tokens: tokens, offset: 0)
        }
        throw fail("a line must hold \"\(f.chatFeature)\", \"\(f.promptFeature)\"/\"\(f.completionFeature)\" or \"\(f.textFeature)\"")
    }

    /// The prompt's length in the full chat's tokens (they agree up to there, or the chat
    /// template renders a turn differently once it is not the last; then where they part).
    static func commonPrefix(_ a: [Int32], _ b: [Int32]) -> Int {
        var i = 0
        while i < a.count, i < b.count, a[i] == b[i] { i += 1 }
        return i
    }

    /// Cuts examples longer than `maxLength` tokens; returns how many were cut.
    public static func truncate(_ examples: inout [Example], maxLength: Int) -> Int {
        var cut = 0
        for i in examples.indices where examples[i].tokens.count > maxLength {
            examples[i].tokens.removeLast(examples[i].tokens.count - maxLength)
            if examples[i].mask != nil { examples[i].mask!.removeLast(examples[i].mask!.count - maxLength) }
            cut += 1
        }
        return cut
    }
}

/// Batches by length, as mlx-lm builds them: examples sorted by token count, cut into
/// batches of `batchSize` (a remainder smaller than a batch is left out), and the batches'
/// order shuffled per epoch from the seed. The position (epoch, index) is the data order a
/// checkpoint keeps, so a resumed run sees the same batches.
public struct Batches: Sendable {
    public let batches: [[Int]]
    public let seed: UInt64

    public init(lengths: [Int], batchSize: Int, seed: UInt64) {
        let order = lengths.indices.sorted { (lengths[$0], $0) < (lengths[$1], $1) }
        var b: [[Int]] = []
        var i = 0
        while i + batchSize <= order.count {
            b.append(Array(order[i..<(i + batchSize)]))
            i += batchSize
        }
        batches = b
        self.seed = seed
    }

    /// Batches for measuring a set's loss (validation, test): at most `batchSize` examples each,
    /// in an order seeded apart from the training batches'.
    public init(evaluating ex: [Example], batchSize: Int, seed: UInt64) {
        self.init(lengths: ex.map(\.tokens.count), batchSize: min(batchSize, ex.count), seed: seed &+ 1)
    }

    /// The batch at overall position `k` (epoch k / count, shuffled per epoch).
    public func batch(at k: Int) -> [Int] {
        let epoch = k / batches.count, i = k % batches.count
        return batches[permutation(epoch)[i]]
    }

    func permutation(_ epoch: Int) -> [Int] {
        var rng = SplitMix(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        var p = Array(batches.indices)
        p.shuffle(using: &rng)
        return p
    }
}

extension TrainingBatch {
    /// The examples at `indices` as one batch.
    public init(_ examples: [Example], _ indices: [Int]) {
        self.init(sequences: indices.map { examples[$0].tokens }, offsets: indices.map { examples[$0].offset },
                  masks: indices.map { examples[$0].mask })
    }
}
