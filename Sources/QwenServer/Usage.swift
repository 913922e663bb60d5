import QwenChat
import QwenEngine

/// A response's `usage`: tokens in and out, prompt tokens served from the prefix cache, and
/// speculative decoding's drafts (OpenAI's prediction fields: kept drafts are
/// `accepted_prediction_tokens`, the others `rejected_prediction_tokens`; neither is billed
/// apart from the completion tokens they became).
struct Usage: Equatable {
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

    var json: JSONValue {
        .object([("prompt_tokens", .int(promptTokens)), ("completion_tokens", .int(completionTokens)),
                 ("total_tokens", .int(promptTokens + completionTokens)),
                 ("prompt_tokens_details", .object([("cached_tokens", .int(cachedTokens))])),
                 ("completion_tokens_details", .object([("accepted_prediction_tokens", .int(acceptedDraftTokens)),
                                                        ("rejected_prediction_tokens", .int(draftTokens - acceptedDraftTokens))]))])
    }
}
