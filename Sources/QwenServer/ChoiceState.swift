import Foundation
import QwenChat
import QwenEngine
import QwenTokenizer

/// Turns one choice's tokens into what the client sees: text decoded without broken
/// characters, cut at stop sequences (which are never shown), split into reasoning,
/// content and tool calls, with each token's log-probabilities.
struct ChoiceState {
    var decoder: StreamingDecoder
    var stop: StopMatcher
    var parser: OutputParser
    let tokenizer: Tokenizer
    var finished = false
    var stoppedByString = false
    var tokens = 0
    var content = ""
    var reasoning = ""
    var toolCalls: [OutputParser.ToolCall] = []
    var logprobs: [JSONValue] = []
    /// The same, as (token, logprob, top) for the completions API's shape.
    var rawLogprobs: [TokenOutput] = []
    var finishReason: String?

    init(tokenizer: Tokenizer, stops: [String], reasoning: Bool, tools: Bool, toolNames: Set<String> = [], startInReasoning: Bool) {
        self.tokenizer = tokenizer
        decoder = StreamingDecoder(tokenizer: tokenizer, skipSpecial: true)
        stop = StopMatcher(stops: stops)
        parser = OutputParser(reasoning: reasoning, tools: tools, toolNames: toolNames, startInReasoning: startInReasoning)
    }

    struct Delta {
        var content = ""
        var reasoning = ""
        var toolCalls: [OutputParser.ToolCall] = []
        var logprobs: [JSONValue] = []
        var isEmpty: Bool { content.isEmpty && reasoning.isEmpty && toolCalls.isEmpty && logprobs.isEmpty }
    }

    /// Consumes one token. Returns what to send; sets `stoppedByString` when a stop sequence ended the choice.
    mutating func consume(_ t: TokenOutput) -> Delta {
        var d = Delta()
        guard !finished else { return d }
        tokens += 1
        if let lp = t.logprob {
            d.logprobs.append(logprobEntry(t.token, lp, t.top))
            rawLogprobs.append(t)
        }
        let (text, hit) = stop.feed(decoder.push(t.token))
        apply(parser.feed(text), &d)
        if hit {
            stoppedByString = true
            finish(reason: "stop", into: &d, flushText: false)
        }
        logprobs += d.logprobs
        return d
    }

    /// Ends the choice: flushes held-back text and settles the finish reason.
    mutating func finish(reason: String, into d: inout Delta, flushText: Bool = true) {
        guard !finished else { return }
        finished = true
        if flushText {
            let (text, hit) = stop.feed(decoder.flush())
            apply(parser.feed(text), &d)
            if !hit { apply(parser.feed(stop.flush()), &d) }
        }
        apply(parser.finish(), &d)
        finishReason = toolCalls.isEmpty ? reason : "tool_calls"
    }

    mutating func finish(reason: String) -> Delta {
        var d = Delta()
        finish(reason: reason, into: &d)
        return d
    }

    private mutating func apply(_ events: [OutputParser.Event], _ d: inout Delta) {
        for e in events {
            switch e {
            case .content(let s): d.content += s; content += s
            case .reasoning(let s): d.reasoning += s; reasoning += s
            case .toolCall(let c): d.toolCalls.append(c); toolCalls.append(c)
            }
        }
    }

    func logprobEntry(_ token: Int32, _ lp: Float, _ top: [TokenLogprob]) -> JSONValue {
        func one(_ id: Int32, _ v: Float) -> [(String, JSONValue)] {
            let bytes = tokenizer.bytes([id])
            return [("token", .string(String(decoding: bytes, as: UTF8.self))), ("logprob", .double(Double(v))),
                    ("bytes", .array(bytes.map { .int(Int($0)) }))]
        }
        return .object(one(token, lp) + [("top_logprobs", .array(top.map { .object(one($0.token, $0.logprob)) }))])
    }
}

enum IDs {
    static func make(_ prefix: String) -> String {
        var g = SystemRandomNumberGenerator()
        return prefix + String((0..<24).map { _ in "0123456789abcdefghijklmnopqrstuvwxyz".randomElement(using: &g)! })
    }
}
