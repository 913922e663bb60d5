import Foundation
import QwenChat
import QwenEngine
import QwenGrammar
import QwenModel
import QwenTokenizer

/// One served model: its engine, tokenizer and chat template, and the logic that turns
/// OpenAI requests into engine requests and engine events back into OpenAI responses.
public final class ModelService: @unchecked Sendable {
    public let name: String
    public let engine: Engine
    public let tokenizer: Tokenizer
    let renderer: PromptRenderer
    /// API keys and default template arguments, which SIGHUP may replace.
    public let live: LiveSettings
    let thinkingModel: Bool
    let created = Int(Date().timeIntervalSince1970)
    /// Metrics and the per-request log line.
    public let requests: RequestLog
    public var metrics: ServerMetrics { requests.metrics }
    /// LoRA adapters served by name beside the base model.
    public let adapters: AdapterRegistry
    /// Applied when a request names the base model (mlx_lm.server's --adapter-path).
    public let defaultAdapter: LoRAAdapter?
    /// The compute mode that ran (`f32` or `int8`), shown in /v1/models.
    public let compute: String
    /// Compiled output constraints (response_format, tool_choice, regex, choice).
    let structured: StructuredOutputs

    public init(name: String, engine: Engine, tokenizer: Tokenizer, live: LiveSettings = LiveSettings(),
                defaultAdapter: LoRAAdapter? = nil, requestLog: RequestLog? = nil, background: BackgroundWork = BackgroundWork(),
                contentSpecialTokens: ContentSpecialTokens = .text, compute: String = "f32") throws {
        self.compute = compute
        self.name = name
        requests = requestLog ?? RequestLog(metrics: ServerMetrics())
        self.defaultAdapter = defaultAdapter
        adapters = AdapterRegistry(config: engine.model.config, baseName: name, background: background)
        self.engine = engine
        self.tokenizer = tokenizer
        structured = StructuredOutputs(tokenizer: tokenizer, logitRows: engine.model.config.vocabSize)
        // Parse the template now: an unsupported construct stops start-up, not a request.
        renderer = try PromptRenderer(tokenizer: tokenizer, contentSpecialTokens: contentSpecialTokens)
        self.live = live
        thinkingModel = tokenizer.chatTemplate?.contains("<think>") ?? false
        engine.onStep = { [metrics] stats in if let stats { metrics.observeStep(stats) } }
    }

    var contextLimit: Int { engine.maxSequenceTokens }

    /// The model a request names: the base model (with the --adapter-path adapter, if one
    /// was given) or a loaded adapter. Unknown names are a 404.
    func resolveModel(_ f: RequestFields) throws -> (name: String, adapter: LoRAAdapter?) {
        guard let m = try f.string("model"), m != name else { return (name, defaultAdapter) }
        if let e = adapters.get(m) { return (m, e.adapter) }
        let known = [name] + adapters.all.map(\.name)
        throw APIError(.notFound, "The model '\(m)' does not exist; this server serves \(known.map { "'\($0)'" }.joined(separator: ", "))",
                       param: "model", code: "model_not_found")
    }

    // MARK: Prompts

    /// A rendered chat prompt and the names of the tools the request offered.
    struct ChatPrompt {
        let prompt: PromptRenderer.Prompt
        let tools: Set<String>?
    }

    /// The chat prompt, rendered with the model's template.
    func chatPrompt(_ f: RequestFields) throws -> ChatPrompt {
        guard let msgs = f.body["messages"]?.array, !msgs.isEmpty else {
            throw APIError.badParam("messages", "'messages' must be a non-empty list")
        }
        var messages: [JSONValue] = []
        for (i, m) in msgs.enumerated() {
            guard var pairs = m.object else { throw APIError.badParam("messages", "messages[\(i)] must be an object") }
            guard let role = m["role"]?.string, ["system", "user", "assistant", "tool", "developer"].contains(role) else {
                throw APIError.badParam("messages", "messages[\(i)].role must be one of system, user, assistant, tool")
            }
            func set(_ k: String, _ v: JSONValue) {
                if let j = pairs.firstIndex(where: { $0.0 == k }) { pairs[j].1 = v } else { pairs.append((k, v)) }
            }
            if role == "developer" { set("role", .string("system")) }
            switch m["content"] {
            case nil, .null?:
                if role != "assistant" { throw APIError.badParam("messages", "messages[\(i)].content is required") }
            case .string?: break
            case .array(let parts)?:
                var text = ""
                for p in parts {
                    guard p["type"]?.string == "text", let t = p["text"]?.string else {
                        throw APIError.badParam("messages", "messages[\(i)].content: only text parts are supported by this model")
                    }
                    text += text.isEmpty ? t : "\n" + t
                }
                set("content", .string(text))
            default: throw APIError.badParam("messages", "messages[\(i)].content must be a string or a list of text parts")
            }
            // Tool-call arguments arrive as JSON strings; templates expect objects.
            if let calls = m["tool_calls"]?.array {
                let fixed: [JSONValue] = calls.map { c in
                    guard var cp = c.object, let fn = c["function"], var fp = fn.object,
                          let args = fn["arguments"]?.string, let parsed = try? JSONValue.parse(args), parsed.object != nil else { return c }
                    if let j = fp.firstIndex(where: { $0.0 == "arguments" }) { fp[j].1 = parsed }
                    if let j = cp.firstIndex(where: { $0.0 == "function" }) { cp[j].1 = .object(fp) }
                    return .object(cp)
                }
                set("tool_calls", .array(fixed))
            }
            messages.append(.object(pairs))
        }
        var tools: [JSONValue]? = nil
        if let t = f.body["tools"], !t.isNull {
            guard let arr = t.array, arr.allSatisfy({ $0["function"]?["name"]?.string != nil }) else {
                throw APIError.badParam("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\", ...}}")
            }
            if !arr.isEmpty { tools = arr }
        }
        if let choice = f.body["tool_choice"], choice.string == "none" { tools = nil }
        var extra = live.chatTemplateArgs
        if let kw = f.body["chat_template_kwargs"], !kw.isNull {
            guard let pairs = kw.object else { throw APIError.badParam("chat_template_kwargs", "'chat_template_kwargs' must be an object") }
            for (k, v) in pairs {
                guard !ChatTemplate.reservedVariables.contains(k) else {
                    throw APIError.badParam("chat_template_kwargs", "'chat_template_kwargs' may not set '\(k)': the server sets it from the request's own fields")
                }
                extra.removeAll { $0.0 == k }
                extra.append((k, v))
            }
        }
        let p: PromptRenderer.Prompt
        do { p = try renderer.render(messages: messages, tools: tools, extra: extra) } catch let e as PromptRenderer.RenderError {
            throw APIError(.badRequest, e.description, param: "messages")
        }
        return ChatPrompt(prompt: p, tools: tools.map { Set($0.compactMap { $0["function"]?["name"]?.string }) })
    }

    /// The request's output constraint compiled (nil when it has none), and for a reasoning
    /// model whose prompt leaves the reasoning to the output, the gate that defers it.
    func constraint(_ f: RequestFields, chat: Bool, promptText: String) throws -> (TokenConstraint, ReasoningGate?)? {
        guard let spec = try StructuredOutputs.spec(f, tools: f.body["tools"]?.array, chat: chat) else { return nil }
        var gate: ReasoningGate? = nil
        if chat, thinkingModel, !promptText.hasSuffix("</think>\n\n"),
           let open = tokenizer.id(of: "<think>"), let close = tokenizer.id(of: "</think>") {
            gate = ReasoningGate(open: open, close: close, inside: promptText.hasSuffix("<think>\n"))
        }
        let c = try structured.constraint(spec, param: StructuredOutputs.param(spec, f), afterReasoning: gate != nil)
        return (c, gate)
    }

    func engineRequest(prompt: [Int32], _ o: GenerationOptions, adapter: LoRAAdapter? = nil, caller: Caller = Caller()) throws -> EngineRequest {
        let limit = contextLimit
        guard prompt.count < limit else {
            throw APIError(.badRequest, "This model's maximum context length is \(limit) tokens, but the prompt has \(prompt.count) tokens.",
                           param: "messages", code: "context_length_exceeded")
        }
        if let m = o.maxTokens, prompt.count + m > limit {
            throw APIError(.badRequest, "This model's maximum context length is \(limit) tokens. However, you requested \(prompt.count + m) tokens (\(prompt.count) in the prompt, \(m) for the completion).",
                           param: "max_tokens", code: "context_length_exceeded")
        }
        var r = EngineRequest(prompt: prompt, params: o.params, maxTokens: o.maxTokens ?? (limit - prompt.count))
        r.n = o.n
        r.ignoreEOS = o.ignoreEOS
        r.logprobs = o.logprobs
        r.adapter = adapter
        r.cacheSalt = caller.cacheSalt
        r.priority = caller.priority
        if o.speculative?.mode == .draft && engine.drafter == nil {
            throw APIError.badParam("speculative", "'speculative.mode' is 'draft' but this server has no draft model (start it with --draft-model)")
        }
        r.speculative = o.speculative
        return r
    }

    /// The tokens of the request's `prediction`, tokenized off the request threads.
    func predictionTokens(_ o: GenerationOptions) async throws -> [Int32] {
        guard let text = o.prediction, !text.isEmpty else { return [] }
        let tokenizer = self.tokenizer
        let tokens = try await Offload.run { tokenizer.encode(text) }
        guard tokens.count <= Self.maxPredictionTokens else {
            throw APIError.badParam("prediction", "'prediction' has \(tokens.count) tokens; at most \(Self.maxPredictionTokens) are taken")
        }
        return tokens
    }

    static let maxPredictionTokens = 32768

    func submit(_ r: EngineRequest) throws -> Engine.Stream {
        do { return try engine.submit(r) } catch let e as EngineError {
            switch e {
            case .queueFull:
                var err = APIError(.tooManyRequests, e.description, type: "rate_limit_error", code: "server_busy")
                err.headers[.retryAfter] = "1"
                throw err
            case .promptTooLong: throw APIError(.badRequest, e.description, code: "context_length_exceeded")
            case .invalidRequest(let m): throw APIError(.badRequest, m)
            case .shuttingDown: throw APIError(.serviceUnavailable, e.description, type: "server_error", code: "shutting_down")
            }
        }
    }
}
