import Foundation
import QwenChat
import QwenEngine

/// One event of a streamed response, `sequence_number` on every one.
struct ResponseStreamEvent: Encodable {
    enum Part: Encodable {
        case text(OutputText)
        case reasoning(OutputItem.Reasoning.Text)
        func encode(to encoder: Encoder) throws {
            switch self {
            case .text(let t): try t.encode(to: encoder)
            case .reasoning(let r): try r.encode(to: encoder)
            }
        }
    }
    var type: String
    var sequence_number = 0
    var response: ResponseObject?
    var output_index: Int?
    var item_id: String?
    var content_index: Int?
    var item: OutputItem?
    var part: Part?
    var delta: String?
    var text: String?
    var arguments: String?
    var name: String?
    var logprobs: [JSONValue]?

    init(_ type: String) { self.type = type }
}

/// Builds a response's output items from one choice's deltas and says, as events, what
/// changed: the one driver of the Responses API, for a stream, a plain request and a
/// background run alike (the latter two drop the events).
struct ResponseBuilder {
    private(set) var response: ResponseObject
    private var sequence = 0
    /// The item now receiving text: its index in `response.output`.
    private var open: Int?
    /// The open item's text and log-probabilities so far, written into it when it closes (so a long
    /// answer is not copied token by token).
    private var openText = ""
    private var openLogprobs: [JSONValue] = []
    private var pendingLogprobs: [JSONValue] = []
    let includeLogprobs: Bool

    init(response: ResponseObject, includeLogprobs: Bool) {
        self.response = response
        self.includeLogprobs = includeLogprobs
    }

    private mutating func event(_ e: ResponseStreamEvent) -> ResponseStreamEvent {
        var e = e
        e.sequence_number = sequence
        sequence += 1
        return e
    }

    /// `response.created` and `response.in_progress` (or `response.queued` first for a background response).
    mutating func start() -> [ResponseStreamEvent] {
        var created = ResponseStreamEvent("response.created")
        created.response = response
        var progress = ResponseStreamEvent("response.in_progress")
        response.status = "in_progress"
        progress.response = response
        return [event(created), event(progress)]
    }

    /// What one token's delta adds.
    mutating func consume(reasoning: String, content: String, toolCalls: [OutputParser.ToolCall], logprobs: [JSONValue]) -> [ResponseStreamEvent] {
        var out: [ResponseStreamEvent] = []
        if includeLogprobs { pendingLogprobs += logprobs }
        if !reasoning.isEmpty {
            if openReasoning == nil { out += closeOpen(status: "completed"); out += openItem(.reasoning(.init(id: IDs.make("rs_"), status: "in_progress", content: []))) }
            let i = open!
            openText += reasoning
            var d = ResponseStreamEvent("response.reasoning_text.delta")
            d.item_id = response.output[i].id; d.output_index = i; d.content_index = 0; d.delta = reasoning
            out.append(event(d))
        }
        if !content.isEmpty {
            if openMessage == nil { out += closeOpen(status: "completed"); out += openMessageItem() }
            let i = open!
            openText += content
            openLogprobs += pendingLogprobs
            var d = ResponseStreamEvent("response.output_text.delta")
            d.item_id = response.output[i].id; d.output_index = i; d.content_index = 0; d.delta = content
            d.logprobs = pendingLogprobs
            pendingLogprobs = []
            out.append(event(d))
        }
        for c in toolCalls {
            out += closeOpen(status: "completed")
            let call = OutputItem.FunctionCall(id: IDs.make("fc_"), call_id: IDs.make("call_"), name: c.name, arguments: "", status: "in_progress")
            out += openItem(.functionCall(call))
            let i = open!
            var d = ResponseStreamEvent("response.function_call_arguments.delta")
            d.item_id = call.id; d.output_index = i; d.delta = c.arguments
            out.append(event(d))
            var done = ResponseStreamEvent("response.function_call_arguments.done")
            done.item_id = call.id; done.output_index = i; done.arguments = c.arguments; done.name = c.name
            out.append(event(done))
            var finished = call
            finished.arguments = c.arguments
            response.output[i] = .functionCall(finished)
            out += closeOpen(status: "completed")
        }
        return out
    }

    private var openReasoning: Int? {
        guard let i = open, case .reasoning = response.output[i] else { return nil }
        return i
    }
    private var openMessage: Int? {
        guard let i = open, case .message = response.output[i] else { return nil }
        return i
    }

    private mutating func openItem(_ item: OutputItem) -> [ResponseStreamEvent] {
        response.output.append(item)
        open = response.output.count - 1
        var e = ResponseStreamEvent("response.output_item.added")
        e.output_index = open; e.item = item
        var out = [event(e)]
        if case .reasoning(let r) = item {
            var p = ResponseStreamEvent("response.content_part.added")
            p.item_id = r.id; p.output_index = open; p.content_index = 0; p.part = .reasoning(.init(text: ""))
            out.append(event(p))
        }
        return out
    }

    private mutating func openMessageItem() -> [ResponseStreamEvent] {
        let m = OutputItem.Message(id: IDs.make("msg_"), status: "in_progress", content: [])
        var out = openItem(.message(m))
        var p = ResponseStreamEvent("response.content_part.added")
        p.item_id = m.id; p.output_index = open; p.content_index = 0
        p.part = .text(OutputText(text: "", logprobs: []))
        out.append(event(p))
        return out
    }

    /// Closes the open item: its text's `.done`, its part's `.done`, `output_item.done`.
    private mutating func closeOpen(status: String) -> [ResponseStreamEvent] {
        guard let i = open else { return [] }
        open = nil
        let text = openText, logprobs = openLogprobs
        openText = ""
        openLogprobs = []
        var out: [ResponseStreamEvent] = []
        switch response.output[i] {
        case .message(var m):
            m.status = status
            m.content = [OutputText(text: text, logprobs: includeLogprobs ? logprobs : nil)]
            response.output[i] = .message(m)
            let part = m.content[0]
            var d = ResponseStreamEvent("response.output_text.done")
            d.item_id = m.id; d.output_index = i; d.content_index = 0; d.text = part.text; d.logprobs = part.logprobs ?? []
            var p = ResponseStreamEvent("response.content_part.done")
            p.item_id = m.id; p.output_index = i; p.content_index = 0
            p.part = .text(OutputText(text: part.text, logprobs: part.logprobs ?? []))
            out += [event(d), event(p)]
        case .reasoning(var r):
            r.status = status
            r.content = [.init(text: text)]
            response.output[i] = .reasoning(r)
            var d = ResponseStreamEvent("response.reasoning_text.done")
            d.item_id = r.id; d.output_index = i; d.content_index = 0; d.text = text
            var p = ResponseStreamEvent("response.content_part.done")
            p.item_id = r.id; p.output_index = i; p.content_index = 0; p.part = .reasoning(.init(text: text))
            out += [event(d), event(p)]
        case .functionCall(var f):
            f.status = status
            response.output[i] = .functionCall(f)
        }
        var e = ResponseStreamEvent("response.output_item.done")
        e.output_index = i; e.item = response.output[i]
        out.append(event(e))
        return out
    }

    /// Ends the output: open items close, an answer with no item gets an empty message, and
    /// the last event says how the response ended (`completed`, `incomplete`).
    mutating func finish(length: Bool, usage: ResponseUsage?) -> [ResponseStreamEvent] {
        var out: [ResponseStreamEvent] = []
        let answered = response.output.contains { if case .reasoning = $0 { return false } else { return true } }
        if !answered && !length {
            out += closeOpen(status: "completed")
            out += openMessageItem()
        }
        out += closeOpen(status: length ? "incomplete" : "completed")
        response.usage = usage
        if length {
            response.status = "incomplete"
            response.incomplete_details = .init(reason: "max_output_tokens")
        } else {
            response.status = "completed"
        }
        var e = ResponseStreamEvent(length ? "response.incomplete" : "response.completed")
        e.response = response
        out.append(event(e))
        return out
    }

    /// Ends the output as failed or cancelled (a stream that ends early).
    mutating func fail(status: String, code: String, message: String, usage: ResponseUsage?) -> [ResponseStreamEvent] {
        var out = closeOpen(status: "incomplete")
        response.status = status
        response.usage = usage
        if status == "failed" { response.error = .init(code: code, message: message) }
        var e = ResponseStreamEvent(status == "failed" ? "response.failed" : "response.incomplete")
        e.response = response
        out.append(event(e))
        return out
    }
}

/// One response's generation: the choice's text state and the response builder, fed from
/// the engine's events.
struct ResponseRun: Sendable {
    var builder: ResponseBuilder
    var state: ChoiceState
    let promptTokens: Int
    var firstToken: Date?
    var reasoningTokens = 0

    /// Feeds the engine's events to the builder until the stream ends; `write` gets each
    /// token's events (an empty list: a keep-alive). Ends the response as completed,
    /// incomplete (max_output_tokens), cancelled (`cancelled()` true), or failed.
    mutating func drive(_ stream: Engine.Stream, cancelled: @Sendable () -> Bool,
                        write: ([ResponseStreamEvent]) async throws -> Void) async throws -> ResponseObject {
        var usage = Usage(promptTokens: promptTokens)
        var failure: String?
        var ended = false
        func apply(_ d: ChoiceState.Delta) -> [ResponseStreamEvent] {
            if !d.reasoning.isEmpty { reasoningTokens = state.tokens }
            return builder.consume(reasoning: d.reasoning, content: d.content, toolCalls: d.toolCalls, logprobs: d.logprobs)
        }
        for await e in stream.events {
            switch e {
            case .token(_, let t):
                if firstToken == nil { firstToken = Date() }
                let events = apply(state.consume(t))
                if !events.isEmpty { try await write(events) }
                if state.stoppedByString { stream.cancel(choice: 0); ended = true }
            case .finished(_, let reason):
                // Cancelled (by a stop string, handled above, or by cancel / shutdown): not an ending.
                guard reason != .cancelled, !ended else { continue }
                ended = true
                let events = apply(state.finish(reason: reason == .length ? "length" : "stop"))
                if !events.isEmpty { try await write(events) }
            case .done(let u): usage = Usage(u, completionTokens: state.tokens)
            case .failed(let m): failure = m
            case .heartbeat: try await write([])
            }
        }
        let u = ResponseUsage(usage, reasoningTokens: reasoningTokens)
        if let failure {
            try await write(builder.fail(status: "failed", code: "server_error", message: failure, usage: u))
        } else if !ended {
            try await write(builder.fail(status: cancelled() ? "cancelled" : "failed", code: "server_error",
                                         message: "the response was stopped before it finished (the server is shutting down)", usage: u))
        } else {
            try await write(builder.finish(length: state.finishReason == "length", usage: u))
        }
        return builder.response
    }
}
