/// Splits a Qwen model's streamed output into reasoning (`<think>…</think>`), content and
/// tool calls (`<tool_call>{json}</tool_call>`), piece by piece, holding back only text
/// that might be the start of one of those tags.
public struct OutputParser {
    public struct ToolCall: Equatable, Sendable {
        public let name: String
        /// The arguments as a JSON string, as OpenAI returns them.
        public let arguments: String
        public init(name: String, arguments: String) {
            self.name = name
            self.arguments = arguments
        }
    }

    public enum Event: Equatable {
        case reasoning(String)
        case content(String)
        case toolCall(ToolCall)
    }

    enum Mode { case reasoning, content, toolCall, bareJSON }

    let parseReasoning: Bool
    let parseTools: Bool
    /// Declared tool names. Small Qwen models sometimes answer with the bare JSON of a
    /// call, without the <tool_call> tags; a whole reply that is exactly such a call of a
    /// declared tool counts as one.
    let toolNames: Set<String>
    private var mode: Mode
    private var buffer = ""
    private var sawContent = false

    /// - startInReasoning: the prompt already opened `<think>` (the model continues inside it).
    public init(reasoning: Bool, tools: Bool, toolNames: Set<String> = [], startInReasoning: Bool = false) {
        parseReasoning = reasoning
        parseTools = tools
        self.toolNames = toolNames
        mode = reasoning && startInReasoning ? .reasoning : .content
    }

    public mutating func feed(_ text: String) -> [Event] {
        buffer += text
        return drain(final: false)
    }

    public mutating func finish() -> [Event] { drain(final: true) }

    private mutating func drain(final: Bool) -> [Event] {
        var out: [Event] = []
        while !buffer.isEmpty {
            switch mode {
            case .reasoning:
                if let r = buffer.range(of: "</think>") {
                    let text = String(buffer[..<r.lowerBound])
                    if !text.isEmpty { out.append(.reasoning(text)) }
                    buffer = String(buffer[r.upperBound...])
                    mode = .content
                    // The template puts a blank line after </think>; it is not content.
                    trimLeadingNewlinesOnce = true
                    continue
                }
                let keep = final ? 0 : Self.partialSuffix(buffer, "</think>")
                let text = String(buffer.dropLast(keep))
                if !text.isEmpty { out.append(.reasoning(text)) }
                buffer = String(buffer.suffix(keep))
                return out
            case .content:
                if trimLeadingNewlinesOnce {
                    let trimmed = String(buffer.drop { $0 == "\n" })
                    if trimmed.isEmpty && !final { buffer = ""; return out }
                    buffer = trimmed
                    trimLeadingNewlinesOnce = false
                }
                var tags: [String] = []
                if parseReasoning && !sawContent { tags.append("<think>") }
                if parseTools { tags.append("<tool_call>") }
                var first: (Range<String.Index>, String)? = nil
                for t in tags {
                    if let r = buffer.range(of: t), first == nil || r.lowerBound < first!.0.lowerBound { first = (r, t) }
                }
                if let (r, tag) = first {
                    let before = String(buffer[..<r.lowerBound])
                    if tag == "<think>" && !before.allSatisfy(\.isWhitespace) {
                        // <think> after real content is just text.
                        emitContent(String(buffer[..<r.upperBound]), &out)
                        buffer = String(buffer[r.upperBound...])
                        continue
                    }
                    if tag == "<tool_call>" { emitContent(before, &out) }
                    buffer = String(buffer[r.upperBound...])
                    mode = tag == "<think>" ? .reasoning : .toolCall
                    continue
                }
                if parseTools && !toolNames.isEmpty && !sawContent && buffer.first(where: { !$0.isWhitespace }) == "{" {
                    mode = .bareJSON
                    continue
                }
                var keep = 0
                if !final { for t in tags { keep = max(keep, Self.partialSuffix(buffer, t)) } }
                // Leading white space before a possible <think> waits too.
                if !final && parseReasoning && !sawContent && buffer.allSatisfy(\.isWhitespace) { return out }
                emitContent(String(buffer.dropLast(keep)), &out)
                buffer = String(buffer.suffix(keep))
                return out
            case .bareJSON:
                guard final else { return out }
                if let call = Self.parseCall(buffer), toolNames.contains(call.name) {
                    out.append(.toolCall(call))
                } else {
                    emitContent(buffer, &out)
                }
                buffer = ""
                mode = .content
            case .toolCall:
                guard let r = buffer.range(of: "</tool_call>") else {
                    if final {
                        // An unfinished call is returned as the text it was.
                        emitContent("<tool_call>" + buffer, &out)
                        buffer = ""
                    }
                    return out
                }
                let body = String(buffer[..<r.lowerBound])
                buffer = String(buffer[r.upperBound...])
                mode = .content
                if let call = Self.parseCall(body) { out.append(.toolCall(call)) } else { emitContent("<tool_call>" + body + "</tool_call>", &out) }
            }
        }
        return out
    }

    private var trimLeadingNewlinesOnce = false

    private mutating func emitContent(_ s: String, _ out: inout [Event]) {
        guard !s.isEmpty else { return }
        sawContent = true
        out.append(.content(s))
    }

    /// Length of the longest suffix of `s` that is a proper prefix of `tag`.
    static func partialSuffix(_ s: String, _ tag: String) -> Int {
        let a = Array(s), t = Array(tag)
        for k in stride(from: min(t.count - 1, a.count), to: 0, by: -1) where Array(a[(a.count - k)...]) == Array(t[..<k]) {
            return k
        }
        return 0
    }

    static func parseCall(_ body: String) -> ToolCall? {
        guard let v = try? JSONValue.parse(body.trimmingWhitespace), let name = v["name"]?.string else { return nil }
        let args = v["arguments"] ?? v["parameters"] ?? .object([])
        return ToolCall(name: name, arguments: args.string ?? args.compact)
    }
}
