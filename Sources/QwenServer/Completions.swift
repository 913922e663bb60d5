import Foundation
import Hummingbird
import QwenChat
import QwenEngine

/// POST /v1/completions: raw text in, text out (no chat template).
extension ModelService {
    func completions(_ body: JSONValue, _ ctx: some Invocation) async throws -> Response {
        let started = Date()
        let f = try RequestFields(body)
        let target = try resolveModel(f)
        let tokenizer = self.tokenizer
        let o = try GenerationOptions.parse(f, chat: false, vocabSize: tokenizer.vocabularySize)
        let prompt: [Int32]
        let promptText: String
        switch f.body["prompt"] {
        case .string(let s)?:
            promptText = s
            prompt = try await Offload.run { tokenizer.encode(s) }
        case .array(let a)? where a.count == 1 && a[0].string != nil:
            promptText = a[0].string!
            prompt = try await Offload.run { tokenizer.encode(promptText) }
        case .array(let a)? where !a.isEmpty && a.allSatisfy({ $0.int != nil }):
            prompt = a.map { Int32(clamping: $0.int!) }
            guard prompt.allSatisfy({ $0 >= 0 && Int($0) < tokenizer.vocabularySize }) else {
                throw APIError.badParam("prompt", "'prompt' has a token id outside the vocabulary (0..<\(tokenizer.vocabularySize))")
            }
            promptText = tokenizer.decode(prompt)
        case .array(let a)? where a.count > 1:
            throw APIError.badParam("prompt", "send one prompt per request (batches of prompts are not supported)")
        default:
            throw APIError.badParam("prompt", "'prompt' must be a string or a list of token ids")
        }
        guard !prompt.isEmpty else { throw APIError.badParam("prompt", "'prompt' is empty") }
        if o.echo && o.logprobs != nil {
            throw APIError.badParam("echo", "'echo' together with 'logprobs' is not supported (prompt log-probabilities are not computed)")
        }
        let constraint = try await Offload.run { [self] in try self.constraint(f, chat: false, promptText: promptText) }
        var request = try engineRequest(prompt: prompt, o, adapter: target.adapter, caller: ctx.caller)
        request.constraint = constraint?.0
        request.prediction = try await predictionTokens(o)
        let stream = try submit(request)
        let gone = ctx.cancelWhenClientGoes(stream)
        let states = (0..<o.n).map { _ in ChoiceState(tokenizer: tokenizer, stops: o.stops, reasoning: false, tools: false, startInReasoning: false) }
        let id = IDs.make("cmpl-")
        let created = Int(Date().timeIntervalSince1970)
        let record = requests.record(id: id, endpoint: "/v1/completions", model: target.name, promptTokens: prompt.count, prompt: promptText, started: started)
        let echoText = o.echo ? promptText : ""


        @Sendable func logprobsJSON(_ outs: [TokenOutput], offset: Int) -> JSONValue {
            var tokens: [JSONValue] = [], lps: [JSONValue] = [], tops: [JSONValue] = [], offsets: [JSONValue] = []
            var pos = offset
            for t in outs {
                let text = tokenizer.decode([t.token])
                tokens.append(.string(text))
                lps.append(.double(Double(t.logprob ?? 0)))
                tops.append(.object(t.top.map { (tokenizer.decode([$0.token]), .double(Double($0.logprob))) }))
                offsets.append(.int(pos))
                pos += text.count
            }
            return .object([("tokens", .array(tokens)), ("token_logprobs", .array(lps)), ("top_logprobs", .array(tops)), ("text_offset", .array(offsets))])
        }

        if !o.stream {
            var states = states
            let (usage, firstToken) = try await Self.collect(stream, &states, promptTokens: prompt.count)
            requests.finished(record, firstToken: firstToken, completionTokens: usage.completionTokens, cancelled: gone.isSet)
            let choices = states.enumerated().map { i, s in
                Completion.Choice(index: i, text: echoText + s.content,
                                  logprobs: o.logprobs == nil ? .null : logprobsJSON(s.rawLogprobs, offset: echoText.count),
                                  finish_reason: Nullable(s.finishReason ?? "stop"))
            }
            return Self.typedResponse(Completion(id: id, created: created, model: target.name, choices: choices, usage: Nullable(usage)))
        }

        let requests = self.requests, name = target.name
        return Response(status: .ok, headers: Self.sseHeaders, body: ResponseBody { writer in
            var sse = SSEWriter(writer)
            var states = states
            var firstToken: Date?
            var sentEcho = Array(repeating: echoText.isEmpty, count: o.n)
            func chunk(_ i: Int, text: String, logprobs: JSONValue?, finish: String?) -> Completion {
                Completion(id: id, created: created, model: name,
                           choices: [.init(index: i, text: text, logprobs: logprobs ?? .null, finish_reason: Nullable(finish))],
                           usage: o.includeUsage ? Nullable(nil) : nil)
            }
            do {
                var usage = Usage(promptTokens: prompt.count)
                for await e in stream.events {
                    switch e {
                    case .token(let i, let t):
                        if firstToken == nil { firstToken = Date() }
                        let d = states[i].consume(t)
                        var text = d.content
                        if !sentEcho[i] { text = echoText + text; sentEcho[i] = true }
                        if !text.isEmpty || (o.logprobs != nil) {
                            let lp = o.logprobs == nil ? nil : logprobsJSON([t], offset: 0)
                            try await sse.send(chunk(i, text: text, logprobs: lp, finish: nil))
                        }
                        if states[i].stoppedByString {
                            stream.cancel(choice: i)
                            try await sse.send(chunk(i, text: "", logprobs: nil, finish: states[i].finishReason))
                        }
                    case .finished(let i, let reason):
                        guard !states[i].stoppedByString else { continue }
                        let d = states[i].finish(reason: reason == .length ? "length" : "stop")
                        try await sse.send(chunk(i, text: d.content, logprobs: nil, finish: states[i].finishReason))
                    case .done(let u): usage = Usage(u, completionTokens: states.reduce(0) { $0 + $1.tokens })
                    case .failed(let m): try await sse.send(APIError(.internalServerError, m).json)
                    case .heartbeat: try await sse.keepAlive()
                    }
                }
                if o.includeUsage {
                    try await sse.send(Completion(id: id, created: created, model: name, choices: [], usage: Nullable(usage)))
                }
                try await sse.done()
                requests.finished(record, firstToken: firstToken, completionTokens: usage.completionTokens, cancelled: gone.isSet)
            } catch {
                stream.cancel()
                requests.finished(record, firstToken: firstToken, completionTokens: states.reduce(0) { $0 + $1.tokens }, cancelled: true)
                throw error
            }
        })
    }
}
