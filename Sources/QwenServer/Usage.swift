import QwenChat
import QwenEngine

/// A response's `usage`: tokens in and out, prompt tokens served from the prefix cache, and
/// speculative decoding's drafts (OpenAI's prediction fields: kept drafts are
/// `accepted_prediction_tokens`, the others `rejected_prediction_tokens`; neither is billed
/// apart from the completion tokens they became).
struct Usage: Equatable, Encodable {
    var promptTokens: Int
    var completionTokens = 0
    var cachedTokens = 0
    var draftTokens = 0
    var acceptedDraftTokens = 0

    init(promptTokens: Int) { self.promptTokens = promptTokens }

    /// The engine's figures, with the completion tokens the client was actually sent (a stop
    /// string may end a choice before the engine knows).
    init(_ u: EngineUsage, completionTokens: Int) {
        promptTokens = u.promptTokens
        self.completionTokens = completionTokens
        cachedTokens = u.cachedTokens
        draftTokens = u.draftTokens
        acceptedDraftTokens = u.acceptedDraftTokens
    }

    enum CodingKeys: String, CodingKey { case prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details, completion_tokens_details }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(promptTokens, forKey: .prompt_tokens)
        try c.encode(completionTokens, forKey: .completion_tokens)
        try c.encode(promptTokens + completionTokens, forKey: .total_tokens)
        try c.encode(["cached_tokens": cachedTokens], forKey: .prompt_tokens_details)
        try c.encode(["accepted_prediction_tokens": acceptedDraftTokens, "rejected_prediction_tokens": draftTokens - acceptedDraftTokens],
                     forKey: .completion_tokens_details)
    }
}
