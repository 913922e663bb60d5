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
            let choices = states.enumerated().map { i, s in
                ChatCompletion.Choice(index: i,
                                      message: .init(content: Nullable(s.content.isEmpty && !s.toolCalls.isEmpty ? nil : s.content),
                                                     reasoning_content: s.reasoning.isEmpty ? nil : s.reasoning,
                                                     tool_calls: s.toolCalls.isEmpty ? nil : s.toolCalls.map { ToolCallOut($0, index: nil) }),
                                      logprobs: Nullable(o.logprobs == nil ? nil : ChatLogprobs(content: s.logprobs)),
                                      finish_reason: s.finishReason ?? "stop")
            }
            return Self.typedResponse(ChatCompletion(id: id, created: created, model: target.name, choices: choices, usage: usage))
        }

        let requests = self.requests
        let name = target.name
        return Response(status: .ok, headers: Self.sseHeaders, body: ResponseBody { writer in
            var sse = SSEWriter(writer)
            var states = states
            var firstToken: Date?
            var toolIndex = Array(repeating: 0, count: o.n)
            func chunk(_ i: Int, _ delta: ChatCompletionChunk.Delta, logprobs: [JSONValue]? = nil, finish: String? = nil) -> ChatCompletionChunk {
                ChatCompletionChunk(id: id, created: created, model: name,
                                    choices: [.init(index: i, delta: delta, logprobs: Nullable(logprobs.map { ChatLogprobs(content: $0) }),
                                                    finish_reason: Nullable(finish))],
                                    usage: o.includeUsage ? Nullable(nil) : nil)
            }
            func delta(_ d: ChoiceState.Delta, _ i: Int) -> ChatCompletionChunk.Delta {
                var out = ChatCompletionChunk.Delta()
                if !d.reasoning.isEmpty { out.reasoning_content = d.reasoning }
                if !d.content.isEmpty { out.content = d.content }
                if !d.toolCalls.isEmpty {
                    out.tool_calls = d.toolCalls.map { c in
                        defer { toolIndex[i] += 1 }
                        return ToolCallOut(c, index: toolIndex[i])
                    }
                }
                return out
            }
            do {
                for i in 0..<o.n {
                    try await sse.send(chunk(i, .init(role: "assistant", content: "")))
                }
                var usage = Usage(promptTokens: prompt.count)
                for await e in stream.events {
                    switch e {
                    case .token(let i, let t):
                        if firstToken == nil { firstToken = Date() }
                        let d = states[i].consume(t)
                        if !d.isEmpty {
                            try await sse.send(chunk(i, delta(d, i), logprobs: o.logprobs == nil ? nil : d.logprobs))
                        }
                        if states[i].stoppedByString {
                            stream.cancel(choice: i)
                            try await sse.send(chunk(i, .init(), finish: states[i].finishReason))
                        }
                    case .finished(let i, let reason):
                        guard !states[i].finished || !states[i].stoppedByString else { continue }
                        let d = states[i].finish(reason: reason == .length ? "length" : "stop")
                        if !d.isEmpty { try await sse.send(chunk(i, delta(d, i))) }
                        try await sse.send(chunk(i, .init(), finish: states[i].finishReason))
                    case .done(let u):
                        usage = Usage(u, completionTokens: states.reduce(0) { $0 + $1.tokens })
                    case .failed(let m):
                        try await sse.send(APIError(.internalServerError, m).json)
                    case .heartbeat:
                        try await sse.keepAlive()
                    }
                }
                if o.includeUsage {
                    try await sse.send(ChatCompletionChunk(id: id, created: created, model: name, choices: [], usage: Nullable(usage)))
                }
                try await sse.done()
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

    static let sseHeaders: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]

    /// A typed body as JSON.
    static func typedResponse<T: Encodable>(_ v: T, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: ResponseJSON.encode(v))))
    }

    static func jsonResponse(_ v: JSONValue, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: ResponseBody(byteBuffer: ByteBuffer(string: v.compact)))
    }
}
