import Foundation
import Hummingbird
import QwenChat
import QwenEngine

/// POST /v1/chat/completions.
extension ModelService {
    func chatCompletions(_ body: JSONValue, _ ctx: some Invocation) async throws -> Response {
        let started = Date()
        let f = try RequestFields(body)
        let target = try resolveModel(f)
        let o = try GenerationOptions.parse(f, chat: true, vocabSize: tokenizer.vocabularySize)
        // Rendering and tokenising are CPU work proportional to the body: off the request threads.
        // (So is compiling an output constraint, the first time one is seen.)
        let (promptText, prompt, tools, constraint) = try await Offload.run { [self] in
            let p = try chatPrompt(f)
            return (p.prompt.text, renderer.tokens(p.prompt), p.tools, try self.constraint(f, chat: true, promptText: p.prompt.text))
        }
        var request = try engineRequest(prompt: prompt, o, adapter: target.adapter, caller: ctx.caller)
        request.constraint = constraint?.0
        request.prediction = try await predictionTokens(o)
        request.reasoningGate = constraint?.1
        let stream = try submit(request)
        // A client that goes away (streaming or not) frees its sequence at once.
        let gone = ctx.cancelWhenClientGoes(stream)
        let startInReasoning = thinkingModel && promptText.hasSuffix("<think>\n")
        let states = (0..<o.n).map { _ in
            ChoiceState(tokenizer: tokenizer, stops: o.stops, reasoning: thinkingModel, tools: tools != nil, toolNames: tools ?? [],
                        startInReasoning: startInReasoning)
        }
        let id = IDs.make("chatcmpl-")
        let created = Int(Date().timeIntervalSince1970)
        let record = requests.record(id: id, endpoint: "/v1/chat/completions", model: target.name, promptTokens: prompt.count, prompt: promptText, started: started)

        if !o.stream {
            var states = states
            let (usage, firstToken) = try await Self.collect(stream, &states, promptTokens: prompt.count)
            if Task.isCancelled { stream.cancel() }
            requests.finished(record, firstToken: firstToken, completionTokens: usage.completionTokens, cancelled: gone.isSet)
            let choices: [JSONValue] = states.enumerated().map { i, s in
                var msg: [(String, JSONValue)] = [("role", .string("assistant")), ("content", s.content.isEmpty && !s.toolCalls.isEmpty ? .null : .string(s.content))]
                if !s.reasoning.isEmpty { msg.append(("reasoning_content", .string(s.reasoning))) }
                if !s.toolCalls.isEmpty { msg.append(("tool_calls", .array(s.toolCalls.enumerated().map { Self.toolCallJSON($1, index: nil) }))) }
                return .object([("index", .int(i)), ("message", .object(msg)),
                                ("logprobs", o.logprobs == nil ? .null : .object([("content", .array(s.logprobs))])),
                                ("finish_reason", .string(s.finishReason ?? "stop"))])
            }
            let json: JSONValue = .object([
                ("id", .string(id)), ("object", .string("chat.completion")), ("created", .int(created)), ("model", .string(target.name)),
                ("choices", .array(choices)), ("usage", usage.json),
            ])
            return Self.jsonResponse(json)
        }

        let requests = self.requests
        let name = target.name
        return Response(status: .ok, headers: Self.sseHeaders, body: ResponseBody { writer in
            var states = states
            var firstToken: Date?
            var toolIndex = Array(repeating: 0, count: o.n)
            func chunk(_ i: Int?, delta: [(String, JSONValue)], logprobs: [JSONValue]?, finish: String?, usage: JSONValue? = nil) -> JSONValue {
                var c: [(String, JSONValue)] = [("id", .string(id)), ("object", .string("chat.completion.chunk")), ("created", .int(created)), ("model", .string(name))]
                if let i {
                    c.append(("choices", .array([.object([("index", .int(i)), ("delta", .object(delta)),
                                                          ("logprobs", logprobs.map { .object([("content", .array($0))]) } ?? .null),
                                                          ("finish_reason", finish.map { .string($0) } ?? .null)])])))
                } else {
                    c.append(("choices", .array([])))
                }
                if o.includeUsage { c.append(("usage", usage ?? .null)) }
                return .object(c)
            }
            func deltaFields(_ d: ChoiceState.Delta, _ i: Int) -> [(String, JSONValue)] {
                var f: [(String, JSONValue)] = []
                if !d.reasoning.isEmpty { f.append(("reasoning_content", .string(d.reasoning))) }
                if !d.content.isEmpty { f.append(("content", .string(d.content))) }
                if !d.toolCalls.isEmpty {
                    f.append(("tool_calls", .array(d.toolCalls.map { c in
                        defer { toolIndex[i] += 1 }
                        return ModelService.toolCallJSON(c, index: toolIndex[i])
                    })))
                }
                return f
            }
            do {
                for i in 0..<o.n {
                    try await writer.write(Self.sse(chunk(i, delta: [("role", .string("assistant")), ("content", .string(""))], logprobs: nil, finish: nil)))
                }
                var usage = Usage(promptTokens: prompt.count)
                for await e in stream.events {
                    switch e {
                    case .token(let i, let t):
                        if firstToken == nil { firstToken = Date() }
                        let d = states[i].consume(t)
                        if !d.isEmpty {
                            try await writer.write(Self.sse(chunk(i, delta: deltaFields(d, i), logprobs: o.logprobs == nil ? nil : d.logprobs, finish: nil)))
                        }
                        if states[i].stoppedByString {
                            stream.cancel(choice: i)
                            try await writer.write(Self.sse(chunk(i, delta: [], logprobs: nil, finish: states[i].finishReason)))
                        }
                    case .finished(let i, let reason):
                        guard !states[i].finished || !states[i].stoppedByString else { continue }
                        let d = states[i].finish(reason: reason == .length ? "length" : "stop")
                        if !d.isEmpty { try await writer.write(Self.sse(chunk(i, delta: deltaFields(d, i), logprobs: nil, finish: nil))) }
                        try await writer.write(Self.sse(chunk(i, delta: [], logprobs: nil, finish: states[i].finishReason)))
                    case .done(let u):
                        usage = Usage(u, completionTokens: states.reduce(0) { $0 + $1.tokens })
                    case .failed(let m):
                        try await writer.write(Self.sse(APIError(.internalServerError, m).json))
                    case .heartbeat:
                        try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                    }
                }
                try await Self.endStream(&writer, usage: o.includeUsage ? chunk(nil, delta: [], logprobs: nil, finish: nil, usage: usage.json) : nil)
                requests.finished(record, firstToken: firstToken, completionTokens: usage.completionTokens, cancelled: gone.isSet)
            } catch {
                // The client went away: free the sequence now.
                stream.cancel()
                requests.finished(record, firstToken: firstToken, completionTokens: states.reduce(0) { $0 + $1.tokens }, cancelled: true)
                throw error
            }
        })
    }

    /// Runs a request that is not streamed to its end: fills every choice's state and
    /// returns the usage (prompt, completion, cached tokens) and when the first token came.
    static func collect(_ stream: Engine.Stream, _ states: inout [ChoiceState], promptTokens: Int) async throws
        -> (usage: Usage, firstToken: Date?) {
        var usage = Usage(promptTokens: promptTokens)
        var firstToken: Date?
        for await e in stream.events {
            switch e {
            case .token(let i, let t):
                if firstToken == nil { firstToken = Date() }
                _ = states[i].consume(t)
                if states[i].stoppedByString { stream.cancel(choice: i) }
            case .finished(let i, let reason): _ = states[i].finish(reason: reason == .length ? "length" : "stop")
            case .done(let u): usage = Usage(u, completionTokens: states.reduce(0) { $0 + $1.tokens })
            case .failed(let m):
                stream.cancel()
                throw APIError(.internalServerError, m)
            case .heartbeat: break
            }
        }
        return (usage, firstToken)
    }

    /// The end of an event stream: the usage chunk when asked for, then [DONE].
    static func endStream(_ writer: inout any ResponseBodyWriter, usage: JSONValue?) async throws {
        if let usage { try await writer.write(sse(usage)) }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
    }

    static func toolCallJSON(_ c: OutputParser.ToolCall, index: Int?) -> JSONValue {
        var f: [(String, JSONValue)] = []
        if let index { f.append(("index", .int(index))) }
        f += [("id", .string(IDs.make("call_"))), ("type", .string("function")),
              ("function", .object([("name", .string(c.name)), ("arguments", .string(c.arguments))]))]
        return .object(f)
    }

    static let sseHeaders: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]

    static func sse(_ v: JSONValue) -> ByteBuffer { ByteBuffer(string: "data: " + v.compact + "\n\n") }

    static func jsonResponse(_ v: JSONValue, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: ResponseBody(byteBuffer: ByteBuffer(string: v.compact)))
    }
}
