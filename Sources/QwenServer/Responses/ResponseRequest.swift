import Foundation
import QwenChat

/// A `POST /v1/responses` body, checked, with its input items in canonical form (each with an
/// id, as `input_items` lists them) and translated into the chat-completions body the shared
/// prompt renderer, sampling options and output constraints read. The Responses API is a
/// second spelling of a chat: nothing here renders or samples.
struct ResponseRequest {
    var model: String?
    var instructions: String?
    /// This request's own input items, canonical.
    var input: [JSONValue]
    var maxOutputTokens: Int?
    var metadata: JSONValue = .object([])
    var tools: [JSONValue] = []
    var toolChoice: JSONValue = .string("auto")
    var parallelToolCalls = true
    var textFormat: JSONValue = .object([("type", .string("text"))])
    var reasoning = ResponseObject.Reasoning()
    var store = true
    var background = false
    var stream = false
    var previousResponseID: String?
    var truncation = "disabled"
    var user: String?
    var temperature = 1.0
    var topP = 1.0
    var topLogprobs: Int?
    var includeLogprobs = false
    /// Fields passed to the chat body unchanged (sampling extensions shared with chat).
    var passthrough: [(String, JSONValue)] = []

    /// Sampling extensions chat completions takes that mean the same here.
    static let passthroughKeys = ["top_k", "min_p", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
                                  "logit_bias", "stop", "ignore_eos", "speculative", "chat_template_kwargs", "regex", "choice"]
    static let includable: Set<String> = ["message.output_text.logprobs", "reasoning.encrypted_content"]

    static func parse(_ f: RequestFields) throws -> ResponseRequest {
        let b = f.body
        for k in ["conversation", "prompt"] where f.has(k) {
            throw APIError.badParam(k, "'\(k)' is not supported by this server; continue a conversation with 'previous_response_id'")
        }
        var r = ResponseRequest(input: [])
        r.model = try f.string("model")
        r.instructions = try f.string("instructions")
        r.maxOutputTokens = try f.int("max_output_tokens", 1...Int(Int32.max))
        r.store = try f.bool("store") ?? true
        r.background = try f.bool("background") ?? false
        r.stream = try f.bool("stream") ?? false
        r.previousResponseID = try f.string("previous_response_id")
        r.user = try f.string("user")
        r.temperature = try f.number("temperature", 0...2) ?? 1
        r.topP = try f.number("top_p", 0...1) ?? 1
        r.topLogprobs = try f.int("top_logprobs", 0...20)
        r.parallelToolCalls = try f.bool("parallel_tool_calls") ?? true
        if r.background && !r.store {
            throw APIError.badParam("background", "'background': true needs 'store': true (a background response is fetched later)")
        }
        if r.background && r.stream {
            throw APIError.badParam("background", "streaming a background response is not supported; poll GET /v1/responses/{id}")
        }
        if let t = try f.string("truncation") {
            guard ["auto", "disabled"].contains(t) else { throw APIError.badParam("truncation", "'truncation' must be 'auto' or 'disabled'") }
            r.truncation = t
        }
        if let inc = b["include"], !inc.isNull {
            guard let list = inc.array, list.allSatisfy({ $0.string != nil }) else {
                throw APIError.badParam("include", "'include' must be a list of strings")
            }
            for s in list.compactMap(\.string) where !includable.contains(s) {
                throw APIError.badParam("include", "'include' value '\(s.prefix(64))' is not supported here (supported: \(includable.sorted().joined(separator: ", ")))")
            }
            r.includeLogprobs = list.contains(.string("message.output_text.logprobs"))
        }
        if let m = b["metadata"], !m.isNull { r.metadata = try metadata(m) }
        if let re = b["reasoning"], !re.isNull {
            guard re.object != nil else { throw APIError.badParam("reasoning", "'reasoning' must be an object") }
            if let e = re["effort"], !e.isNull {
                guard let s = e.string, ["none", "minimal", "low", "medium", "high", "xhigh"].contains(s) else {
                    throw APIError.badParam("reasoning", "'reasoning.effort' must be none, minimal, low, medium, high or xhigh")
                }
                r.reasoning.effort = s
            }
            if let s = re["summary"], !s.isNull {
                guard let v = s.string, ["auto", "concise", "detailed"].contains(v) else {
                    throw APIError.badParam("reasoning", "'reasoning.summary' must be auto, concise or detailed")
                }
                r.reasoning.summary = v
            }
        }
        if let t = b["tools"], !t.isNull { r.tools = try tools(t) }
        if let c = b["tool_choice"], !c.isNull { r.toolChoice = try toolChoice(c, tools: r.tools) }
        if let t = b["text"], !t.isNull {
            guard t.object != nil else { throw APIError.badParam("text", "'text' must be an object") }
            if let fmt = t["format"], !fmt.isNull { r.textFormat = try textFormat(fmt) }
        }
        for k in passthroughKeys { if let v = b[k], !v.isNull { r.passthrough.append((k, v)) } }
        switch b["input"] {
        case .string(let s)?:
            r.input = [message(role: "user", text: s)]
        case .array(let items)?:
            r.input = try items.enumerated().map { try canonical($1, index: $0) }
        case nil, .null?:
            guard r.previousResponseID != nil || r.instructions != nil else { throw APIError.badParam("input", "'input' is required") }
        default:
            throw APIError.badParam("input", "'input' must be a string or a list of input items")
        }
        return r
    }

    // MARK: Fields

    static func metadata(_ m: JSONValue) throws -> JSONValue {
        guard let pairs = m.object, pairs.count <= 16 else { throw APIError.badParam("metadata", "'metadata' must be an object of at most 16 pairs") }
        for (k, v) in pairs {
            guard k.count <= 64, let s = v.string, s.count <= 512 else {
                throw APIError.badParam("metadata", "'metadata' keys are strings of at most 64 characters, values strings of at most 512")
            }
        }
        return m
    }

    /// Function tools, flat as the Responses API writes them (`{"type": "function", "name", "parameters", …}`).
    static func tools(_ t: JSONValue) throws -> [JSONValue] {
        guard let list = t.array else { throw APIError.badParam("tools", "'tools' must be a list") }
        return try list.enumerated().map { i, tool in
            guard let type = tool["type"]?.string else { throw APIError.badParam("tools", "tools[\(i)].type is required") }
            guard type == "function" else {
                throw APIError.badParam("tools", "tools[\(i)]: only function tools are supported by this server (got '\(type.prefix(40))')")
            }
            guard let name = tool["name"]?.string, !name.isEmpty else { throw APIError.badParam("tools", "tools[\(i)].name must be a non-empty string") }
            if let p = tool["parameters"], !p.isNull, p.object == nil {
                throw APIError.badParam("tools", "tools[\(i)].parameters must be a JSON Schema object")
            }
            return tool
        }
    }

    static func toolChoice(_ c: JSONValue, tools: [JSONValue]) throws -> JSONValue {
        if let s = c.string {
            guard ["none", "auto", "required"].contains(s) else { throw APIError.badParam("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": …}") }
            return c
        }
        guard c["type"]?.string == "function", let name = c["name"]?.string else {
            throw APIError.badParam("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": …}")
        }
        guard tools.contains(where: { $0["name"]?.string == name }) else {
            throw APIError.badParam("tool_choice", "'tool_choice' names '\(name.prefix(64))', which is not among 'tools'")
        }
        return c
    }

    static func textFormat(_ fmt: JSONValue) throws -> JSONValue {
        switch fmt["type"]?.string {
        case "text"?, "json_object"?: return fmt
        case "json_schema"?:
            guard fmt["name"]?.string != nil, let s = fmt["schema"], s.object != nil else {
                throw APIError.badParam("text", "'text.format' of type json_schema needs 'name' and a 'schema' object")
            }
            return fmt
        default:
            throw APIError.badParam("text", "'text.format.type' must be text, json_object or json_schema")
        }
    }

    // MARK: Items

    static func message(role: String, text: String) -> JSONValue {
        .object([("type", .string("message")), ("id", .string(IDs.make("msg_"))), ("role", .string(role)), ("status", .string("completed")),
                 ("content", .array([.object([("type", .string(role == "assistant" ? "output_text" : "input_text")), ("text", .string(text))])]))])
    }

    /// One input item in canonical form, every field checked.
    static func canonical(_ item: JSONValue, index i: Int) throws -> JSONValue {
        guard item.object != nil else { throw APIError.badParam("input", "input[\(i)] must be an object") }
        let type = item["type"]?.string ?? (item["role"] != nil ? "message" : "")
        func str(_ k: String) throws -> String {
            guard let s = item[k]?.string else { throw APIError.badParam("input", "input[\(i)].\(k) must be a string") }
            return s
        }
        func id(_ prefix: String) -> JSONValue { .string(item["id"]?.string.map { String($0.prefix(128)) } ?? IDs.make(prefix)) }
        switch type {
        case "message":
            let role = try str("role")
            guard ["user", "assistant", "system", "developer"].contains(role) else {
                throw APIError.badParam("input", "input[\(i)].role must be user, assistant, system or developer")
            }
            var parts: [JSONValue] = []
            switch item["content"] {
            case .string(let s)?:
                parts = [.object([("type", .string(role == "assistant" ? "output_text" : "input_text")), ("text", .string(s))])]
            case .array(let list)?:
                for (j, p) in list.enumerated() {
                    guard let pt = p["type"]?.string, ["input_text", "output_text", "text"].contains(pt), let t = p["text"]?.string else {
                        throw APIError.badParam("input", "input[\(i)].content[\(j)]: only text parts (input_text, output_text) are supported by this model")
                    }
                    parts.append(.object([("type", .string(pt == "text" ? (role == "assistant" ? "output_text" : "input_text") : pt)), ("text", .string(t))]))
                }
            default:
                throw APIError.badParam("input", "input[\(i)].content must be a string or a list of text parts")
            }
            return .object([("type", .string("message")), ("id", id("msg_")), ("role", .string(role)), ("status", .string("completed")),
                            ("content", .array(parts))])
        case "function_call":
            let args = try str("arguments")
            return .object([("type", .string("function_call")), ("id", id("fc_")), ("call_id", .string(try str("call_id"))),
                            ("name", .string(try str("name"))), ("arguments", .string(args)), ("status", .string("completed"))])
        case "function_call_output":
            let output: String
            switch item["output"] {
            case .string(let s)?: output = s
            case .array(let list)?:
                output = try list.enumerated().map { j, p in
                    guard let t = p["text"]?.string else { throw APIError.badParam("input", "input[\(i)].output[\(j)]: only text parts are supported") }
                    return t
                }.joined(separator: "\n")
            default: throw APIError.badParam("input", "input[\(i)].output must be a string or a list of text parts")
            }
            return .object([("type", .string("function_call_output")), ("id", id("fco_")), ("call_id", .string(try str("call_id"))),
                            ("output", .string(output)), ("status", .string("completed"))])
        case "reasoning":
            func texts(_ k: String) throws -> [JSONValue] {
                guard let v = item[k], !v.isNull else { return [] }
                guard let list = v.array, list.allSatisfy({ $0["text"]?.string != nil }) else {
                    throw APIError.badParam("input", "input[\(i)].\(k) must be a list of {\"type\", \"text\"} parts")
                }
                return list
            }
            return .object([("type", .string("reasoning")), ("id", id("rs_")), ("summary", .array(try texts("summary"))),
                            ("content", .array(try texts("content")))])
        case "item_reference":
            throw APIError.badParam("input", "input[\(i)]: item references are not supported; send the item, or continue with 'previous_response_id'")
        default:
            throw APIError.badParam("input", "input[\(i)].type '\(type.prefix(40))' is not supported (message, function_call, function_call_output, reasoning)")
        }
    }

    /// A conversation's items as chat messages: a function call joins the assistant message
    /// before it, a reasoning item becomes the next assistant message's `reasoning_content`.
    static func messages(instructions: String?, items: [JSONValue]) -> [JSONValue] {
        var out: [[(String, JSONValue)]] = []
        if let instructions { out.append([("role", .string("system")), ("content", .string(instructions))]) }
        var reasoning: String?
        func text(_ item: JSONValue) -> String {
            (item["content"]?.array ?? []).compactMap { $0["text"]?.string }.joined(separator: "\n")
        }
        for item in items {
            switch item["type"]?.string {
            case "message"?:
                var m: [(String, JSONValue)] = [("role", .string(item["role"]?.string ?? "user")), ("content", .string(text(item)))]
                if m[0].1 == .string("assistant"), let r = reasoning { m.append(("reasoning_content", .string(r))); reasoning = nil }
                out.append(m)
            case "function_call"?:
                let call: JSONValue = .object([("id", item["call_id"] ?? .null), ("type", .string("function")),
                                               ("function", .object([("name", item["name"] ?? .null), ("arguments", item["arguments"] ?? .null)]))])
                if let last = out.last, last.first?.1 == .string("assistant") {
                    var m = last
                    if let j = m.firstIndex(where: { $0.0 == "tool_calls" }), case .array(let a) = m[j].1 {
                        m[j].1 = .array(a + [call])
                    } else {
                        m.append(("tool_calls", .array([call])))
                    }
                    out[out.count - 1] = m
                } else {
                    var m: [(String, JSONValue)] = [("role", .string("assistant")), ("content", .string(""))]
                    if let r = reasoning { m.append(("reasoning_content", .string(r))); reasoning = nil }
                    m.append(("tool_calls", .array([call])))
                    out.append(m)
                }
            case "function_call_output"?:
                out.append([("role", .string("tool")), ("tool_call_id", item["call_id"] ?? .null), ("content", item["output"] ?? .string(""))])
            case "reasoning"?:
                let parts = (item["content"]?.array ?? []) + (item["summary"]?.array ?? [])
                reasoning = parts.compactMap { $0["text"]?.string }.joined(separator: "\n")
            default: break
            }
        }
        return out.map { .object($0) }
    }

    /// The chat-completions body for this request over `history` (earlier turns' items) and
    /// `skip` leading messages dropped (truncation).
    func chatBody(history: [JSONValue], skip: Int = 0) -> JSONValue {
        var msgs = Self.messages(instructions: nil, items: history + input)
        msgs.removeFirst(min(skip, max(msgs.count - 1, 0)))
        if let instructions { msgs.insert(.object([("role", .string("system")), ("content", .string(instructions))]), at: 0) }
        var b: [(String, JSONValue)] = [("messages", .array(msgs))]
        if !tools.isEmpty {
            b.append(("tools", .array(tools.map { t in
                var fn: [(String, JSONValue)] = [("name", t["name"] ?? .null)]
                if let d = t["description"], !d.isNull { fn.append(("description", d)) }
                fn.append(("parameters", t["parameters"].flatMap { $0.isNull ? nil : $0 } ?? .object([("type", .string("object")), ("properties", .object([]))])))
                return .object([("type", .string("function")), ("function", .object(fn))])
            })))
            b.append(("parallel_tool_calls", .bool(parallelToolCalls)))
        }
        if let name = toolChoice["name"]?.string {
            b.append(("tool_choice", .object([("type", .string("function")), ("function", .object([("name", .string(name))]))])))
        } else {
            b.append(("tool_choice", toolChoice))
        }
        switch textFormat["type"]?.string {
        case "json_object"?: b.append(("response_format", .object([("type", .string("json_object"))])))
        case "json_schema"?:
            var js: [(String, JSONValue)] = [("name", textFormat["name"] ?? .null), ("schema", textFormat["schema"] ?? .null)]
            if let s = textFormat["strict"] { js.append(("strict", s)) }
            b.append(("response_format", .object([("type", .string("json_schema")), ("json_schema", .object(js))])))
        default: break
        }
        if let m = maxOutputTokens { b.append(("max_completion_tokens", .int(m))) }
        b.append(("temperature", .double(temperature)))
        b.append(("top_p", .double(topP)))
        if includeLogprobs || topLogprobs != nil {
            b.append(("logprobs", .bool(true)))
            b.append(("top_logprobs", .int(topLogprobs ?? 0)))
        }
        var pass = passthrough
        if let e = reasoning.effort {
            // Qwen3's switch: no reasoning block for "none" / "minimal" effort.
            var kw = pass.first { $0.0 == "chat_template_kwargs" }?.1.object ?? []
            if !kw.contains(where: { $0.0 == "enable_thinking" }) { kw.append(("enable_thinking", .bool(!["none", "minimal"].contains(e)))) }
            pass.removeAll { $0.0 == "chat_template_kwargs" }
            pass.append(("chat_template_kwargs", .object(kw)))
        }
        b += pass
        return .object(b)
    }

    /// The response object before any output: the request's settings echoed.
    func response(id: String, model: String, status: String, store: Bool) -> ResponseObject {
        ResponseObject(id: id, created_at: Int(Date().timeIntervalSince1970), status: status, background: background, error: nil,
                       incomplete_details: nil, instructions: instructions, max_output_tokens: maxOutputTokens, metadata: metadata,
                       model: model, output: [], parallel_tool_calls: parallelToolCalls, previous_response_id: previousResponseID,
                       reasoning: reasoning, store: store, temperature: temperature, text: .init(format: textFormat),
                       tool_choice: toolChoice, tools: tools, top_logprobs: topLogprobs, top_p: topP, truncation: truncation,
                       usage: nil, user: user)
    }
}
