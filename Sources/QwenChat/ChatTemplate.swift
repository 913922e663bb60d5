/// A model's chat template, rendered as transformers' `apply_chat_template` renders it:
/// `messages`, `tools` (none when absent), `add_generation_prompt`, the tokenizer's
/// special tokens, and any extra keyword arguments (`enable_thinking`, …).
public final class ChatTemplate: @unchecked Sendable {
    public let source: String
    let template: JinjaTemplate

    public init(_ source: String) throws {
        self.source = source
        template = try JinjaTemplate(source)
    }

    /// Names the renderer defines itself: the inputs above, the special tokens and the
    /// template functions. Extra arguments never replace them (a request could otherwise
    /// swap in messages that were never validated, or turn `raise_exception` off).
    public static let reservedVariables: Set<String> = Set(["messages", "tools", "documents", "add_generation_prompt",
                                                            "bos_token", "eos_token", "pad_token", "unk_token"])
        .union(JinjaBuiltins.functions)

    public func render(messages: [JSONValue], tools: [JSONValue]? = nil, addGenerationPrompt: Bool,
                       extra: [(String, JSONValue)] = [], specialTokens: [String: String] = [:]) throws -> String {
        var ctx: [String: JinjaValue] = [:]
        for (k, v) in specialTokens { ctx[k] = .string(v) }
        ctx["messages"] = .list(messages.map(JinjaValue.init))
        ctx["tools"] = tools.map { .list($0.map(JinjaValue.init)) } ?? .none
        ctx["documents"] = JinjaValue.none
        ctx["add_generation_prompt"] = .bool(addGenerationPrompt)
        for (k, v) in extra where !Self.reservedVariables.contains(k) { ctx[k] = JinjaValue(v) }
        return try template.render(ctx)
    }
}
