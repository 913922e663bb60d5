import QwenChat
import QwenTokenizer

/// A chat rendered into a prompt with the model's own template, exactly as
/// `/v1/chat/completions` renders it: the tokenizer's special tokens, the template arguments,
/// and control-token text in the chat's strings kept as text (see ContentShield). The server
/// and `qwen-serve generate --chat` both build prompts here, so they never differ.
public struct PromptRenderer: Sendable {
    public struct Prompt: Sendable {
        public let text: String
        /// UTF-8 ranges of `text` that spell control tokens but came from the chat's strings.
        public let literal: [Range<Int>]
    }

    public struct RenderError: Error, CustomStringConvertible {
        public let description: String
    }

    let tokenizer: Tokenizer
    let template: ChatTemplate?
    /// nil when control-token text in the chat's strings is to become tokens.
    let shield: ContentShield?
    /// `eos_token` and `bos_token` as the template sees them.
    let specialTokens: [String: String]

    /// Parses the tokenizer's template (an unsupported construct throws here, not per request).
    public init(tokenizer: Tokenizer, contentSpecialTokens: ContentSpecialTokens = .text) throws {
        self.tokenizer = tokenizer
        template = try tokenizer.chatTemplate.map(ChatTemplate.init)
        shield = contentSpecialTokens == .text ? ContentShield(tokenizer: tokenizer) : nil
        var special: [String: String] = [:]
        if let e = tokenizer.eosTokenIds.sorted().first { special["eos_token"] = tokenizer.decode([e]) }
        if let b = tokenizer.bosTokenId { special["bos_token"] = tokenizer.decode([b]) }
        specialTokens = special
    }

    /// Renders validated `messages` (and `tools`, and template arguments) with the generation prompt.
    public func render(messages: [JSONValue], tools: [JSONValue]? = nil, extra: [(String, JSONValue)] = []) throws -> Prompt {
        var (messages, tools, extra) = (messages, tools, extra)
        // Control tokens typed into the chat's strings stay text (as OpenAI treats them):
        // swapped for placeholders while the template renders, then marked literal.
        // (Usually no string spells one, and nothing is swapped.)
        let hiding = shield.map { $0.needed(messages, tools, extra) } ?? false
        if hiding, let shield {
            messages = messages.map(shield.hide)
            tools = tools.map { $0.map(shield.hide) }
            extra = extra.map { ($0.0, shield.hide($0.1)) }
        }
        let text: String
        if let template {
            do {
                text = try template.render(messages: messages, tools: tools, addGenerationPrompt: true, extra: extra, specialTokens: specialTokens)
            } catch {
                throw RenderError(description: "the chat template could not render these messages: \(error)")
            }
        } else {
            text = messages.map { "<|im_start|>\($0["role"]?.string ?? "user")\n\($0["content"]?.string ?? "")<|im_end|>\n" }.joined() + "<|im_start|>assistant\n"
        }
        guard hiding, let shield else { return Prompt(text: text, literal: []) }
        let (restored, literal) = shield.restore(text)
        return Prompt(text: restored, literal: literal)
    }

    /// The prompt's token ids.
    public func tokens(_ p: Prompt) -> [Int32] { tokenizer.encode(p.text, literal: p.literal) }
}
