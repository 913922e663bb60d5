import Foundation
import QwenChat
import QwenGrammar
import QwenTokenizer

/// Structured outputs: the request fields that constrain what a model may write
/// (`response_format`, `tool_choice`, and the `regex` / `choice` extension), compiled into a
/// grammar once per distinct constraint and bound to the tokenizer's vocabulary.
final class StructuredOutputs: @unchecked Sendable {
    let tokenizer: Tokenizer
    let logitRows: Int
    private let lock = NSLock()
    private var vocab: TokenVocabulary?
    /// Compiled constraints by their canonical text, least recently used first.
    private var compiled: [(key: String, constraint: TokenConstraint)] = []
    static let cacheLimit = 32

    init(tokenizer: Tokenizer, logitRows: Int) {
        self.tokenizer = tokenizer
        self.logitRows = logitRows
    }

    /// The vocabulary trie, built on first use (a fraction of a second).
    var vocabulary: TokenVocabulary {
        lock.lock()
        defer { lock.unlock() }
        if let v = vocab { return v }
        let specials = Set(tokenizer.addedTokens.filter(\.special).map(\.id))
        let v = TokenVocabulary(tokens: tokenizer.tokenBytes, excluded: specials, endIds: tokenizer.eosTokenIds, size: logitRows)
        vocab = v
        return v
    }

    /// What a request asks for, before compiling.
    enum Spec {
        case jsonObject
        case schema(JSONValue)
        case regex(String)
        case choice([String])
        case tools([SchemaCompiler.Tool], parallel: Bool)

        var key: String {
            switch self {
            case .jsonObject: return "object"
            case .schema(let s): return "schema:" + s.compact
            case .regex(let r): return "regex:" + r
            case .choice(let c): return "choice:" + JSONValue.array(c.map { .string($0) }).compact
            case .tools(let t, let p):
                return "tools:\(p):" + JSONValue.array(t.map { .array([.string($0.name), $0.parameters ?? .null]) }).compact
            }
        }
    }

    /// Reads the constraint fields of a request (nil: unconstrained). `tools` are the chat's
    /// offered tools (nil for /v1/completions).
    static func spec(_ f: RequestFields, tools: [JSONValue]?, chat: Bool) throws -> Spec? {
        var specs: [(String, Spec)] = []
        if let rf = f.body["response_format"], !rf.isNull {
            guard let type = rf["type"]?.string else {
                throw APIError.badParam("response_format", "'response_format' must be an object with a 'type' of text, json_object or json_schema")
            }
            switch type {
            case "text": break
            case "json_object": specs.append(("response_format", .jsonObject))
            case "json_schema":
                guard let js = rf["json_schema"], js.object != nil else {
                    throw APIError.badParam("response_format", "'response_format.json_schema' must be an object with 'name' and 'schema'")
                }
                guard let name = js["name"]?.string, !name.isEmpty, name.utf8.count <= 64,
                      name.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII || $0 == "_" || $0 == "-" }) else {
                    throw APIError.badParam("response_format", "'response_format.json_schema.name' must be 1-64 letters, digits, '_' or '-'")
                }
                if let s = js["strict"], !s.isNull, s.bool == nil {
                    throw APIError.badParam("response_format", "'response_format.json_schema.strict' must be a boolean")
                }
                switch js["schema"] {
                case nil, .null?: specs.append(("response_format", .jsonObject))
                case let s? where s.object != nil || s.bool != nil: specs.append(("response_format", .schema(s)))
                default: throw APIError.badParam("response_format", "'response_format.json_schema.schema' must be a JSON Schema object")
                }
            default:
                throw APIError.badParam("response_format", "'response_format.type' must be text, json_object or json_schema, got '\(type)'")
            }
        }
        for key in ["regex", "guided_regex"] {
            guard let r = f.body[key], !r.isNull else { continue }
            guard let pattern = r.string, !pattern.isEmpty else { throw APIError.badParam(key, "'\(key)' must be a non-empty string") }
            guard pattern.utf8.count <= 16_384 else { throw APIError.badParam(key, "'\(key)' may be at most 16384 bytes") }
            specs.append((key, .regex(pattern)))
        }
        for key in ["choice", "guided_choice"] {
            guard let c = f.body[key], !c.isNull else { continue }
            guard let list = c.array, !list.isEmpty, list.count <= 4096, list.allSatisfy({ ($0.string?.isEmpty == false) }) else {
                throw APIError.badParam(key, "'\(key)' must be a list of 1 to 4096 non-empty strings")
            }
            specs.append((key, .choice(list.compactMap(\.string))))
        }
        if let g = f.body["guided_json"], !g.isNull {
            guard g.object != nil || g.bool != nil else { throw APIError.badParam("guided_json", "'guided_json' must be a JSON Schema object") }
            specs.append(("guided_json", .schema(g)))
        }
        if chat, let t = try toolSpec(f, tools: tools) { specs.append(("tool_choice", t)) }
        if specs.count > 1 {
            throw APIError.badParam(specs[1].0, "'\(specs[0].0)' and '\(specs[1].0)' both constrain the output; send one")
        }
        return specs.first?.1
    }

    /// `tool_choice`: "required" or a named function constrain the output to tool calls.
    static func toolSpec(_ f: RequestFields, tools: [JSONValue]?) throws -> Spec? {
        let parallel = try f.bool("parallel_tool_calls") ?? true
        guard let choice = f.body["tool_choice"], !choice.isNull else { return nil }
        var chosen: [JSONValue]
        if let s = choice.string {
            switch s {
            case "none", "auto": return nil
            case "required": chosen = tools ?? []
            default: throw APIError.badParam("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
            }
            guard !chosen.isEmpty else { throw APIError.badParam("tool_choice", "'tool_choice': 'required' needs 'tools'") }
        } else {
            guard choice["type"]?.string == "function", let name = choice["function"]?["name"]?.string else {
                throw APIError.badParam("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
            }
            chosen = (tools ?? []).filter { $0["function"]?["name"]?.string == name }
            guard !chosen.isEmpty else { throw APIError.badParam("tool_choice", "'tool_choice' names '\(name)', which is not among 'tools'") }
        }
        return .tools(chosen.compactMap(SchemaCompiler.Tool.init(openAI:)), parallel: parallel)
    }

    /// The compiled constraint for `spec` (from the cache when seen before). A schema that
    /// cannot be honoured is a 400 naming the keyword.
    /// `afterReasoning`: the output starts after a reasoning block, so whitespace may lead.
    func constraint(_ spec: Spec, param: String, afterReasoning: Bool = false) throws -> TokenConstraint {
        let key = (afterReasoning ? "ws+" : "") + spec.key
        lock.lock()
        if let i = compiled.firstIndex(where: { $0.key == key }) {
            let hit = compiled.remove(at: i)
            compiled.append(hit)
            lock.unlock()
            return hit.constraint
        }
        lock.unlock()
        let grammar: Grammar
        do {
            switch spec {
            case .jsonObject: grammar = try SchemaCompiler.anyObject()
            case .schema(let s): grammar = try SchemaCompiler.grammar(schema: s)
            case .regex(let r): grammar = try SchemaCompiler.regex(r)
            case .choice(let c): grammar = try SchemaCompiler.choice(c)
            case .tools(let t, let p): grammar = try SchemaCompiler.toolCalls(t, parallel: p)
            }
        } catch let r as SchemaCompiler.Refusal {
            throw APIError(.badRequest, "\(Self.what(spec)) cannot be used for constrained decoding: \(r.description)", param: param, code: "unsupported_schema")
        } catch is GrammarBuilder.TooLarge {
            throw APIError(.badRequest, "\(Self.what(spec)) is too large to compile for constrained decoding", param: param, code: "unsupported_schema")
        }
        let c = TokenConstraint(grammar: afterReasoning ? grammar.allowingLeadingWhitespace() : grammar, vocabulary: vocabulary)
        lock.lock()
        compiled.append((key, c))
        if compiled.count > Self.cacheLimit { compiled.removeFirst() }
        lock.unlock()
        return c
    }

    static func what(_ s: Spec) -> String {
        switch s {
        case .jsonObject, .schema: return "the JSON schema"
        case .regex: return "the regular expression"
        case .choice: return "the choices"
        case .tools: return "the tools' parameters"
        }
    }

    static func param(_ s: Spec, _ f: RequestFields) -> String {
        switch s {
        case .jsonObject, .schema: return f.has("guided_json") ? "guided_json" : "response_format"
        case .regex: return f.has("guided_regex") ? "guided_regex" : "regex"
        case .choice: return f.has("guided_choice") ? "guided_choice" : "choice"
        case .tools: return "tools"
        }
    }
}
