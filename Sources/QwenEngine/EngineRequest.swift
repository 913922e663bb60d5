import QwenGrammar
import QwenModel
import QwenRuntime

/// What a client asks the engine for: token ids in, `n` sampled continuations out.
public struct EngineRequest: Sendable {
    public var prompt: [Int32]
    public var params: SamplingParams
    public var maxTokens: Int
    public var n: Int = 1
    public var ignoreEOS = false
    /// Extra token ids that end a sequence (besides the tokenizer's end-of-sequence ids).
    public var stopTokenIds: Set<Int32> = []
    /// nil: no log-probabilities; k ≥ 0: the chosen token's plus the k most likely.
    public var logprobs: Int?
    /// Separates prefix-cache entries; the adapter's id is mixed in as well.
    public var cacheSalt: UInt64 = 0
    /// The LoRA adapter to run this request with, or nil for the base model.
    public var adapter: LoRAAdapter?
    /// A grammar every choice's output must follow (structured outputs), or nil.
    public var constraint: TokenConstraint?
    /// For a reasoning model: the constraint applies after the reasoning block, which the
    /// output must open (unless the prompt already did) and close first.
    public var reasoningGate: ReasoningGate?
    /// Speculative decoding for this request (nil: the server's setting).
    public var speculative: SpeculativeOptions?
    /// Tokens the client expects much of the output to repeat (OpenAI's `prediction`): drafts
    /// are looked up in them as well as in the prompt and output.
    public var prediction: [Int32] = []
    /// `batch`: offline work (the Batch API) that fills what interactive requests leave: admitted
    /// after them, given few rows while they run, and preempted first.
    public var priority: Priority = .interactive

    public enum Priority: Sendable { case interactive, batch }

    /// The salt its KV blocks are hashed with: keys and values computed under one adapter
    /// are never reused under another (or under the base model).
    var effectiveSalt: UInt64 { cacheSalt ^ (adapter.map { $0.id &* 0x9E37_79B9_7F4A_7C15 } ?? 0) }

    public init(prompt: [Int32], params: SamplingParams, maxTokens: Int) {
        self.prompt = prompt
        self.params = params
        self.maxTokens = maxTokens
    }
}

public struct TokenLogprob: Sendable {
    public let token: Int32
    public let logprob: Float
}

public struct TokenOutput: Sendable {
    public let token: Int32
    /// The chosen token's log-probability and the top alternatives, when asked for.
    public let logprob: Float?
    public let top: [TokenLogprob]
}

public enum FinishReason: String, Sendable {
    case stop, length, cancelled
}

public enum EngineEvent: Sendable {
    /// A sampled token of choice `index`.
    case token(index: Int, TokenOutput)
    /// Choice `index` ended.
    case finished(index: Int, reason: FinishReason)
    /// Every choice ended.
    case done(EngineUsage)
    case failed(String)
    /// Nothing new for a while (queued, or a long prompt being computed): a streaming
    /// response writes a keep-alive, which is also how a departed client is noticed.
    case heartbeat
}

/// What a request used, over all its choices.
public struct EngineUsage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Prompt tokens whose keys and values came from the prefix cache.
    public var cachedTokens: Int
    /// Tokens proposed by speculative decoding, and how many of them the model kept.
    public var draftTokens: Int
    public var acceptedDraftTokens: Int

    public init(promptTokens: Int, completionTokens: Int, cachedTokens: Int = 0, draftTokens: Int = 0, acceptedDraftTokens: Int = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
        self.draftTokens = draftTokens
        self.acceptedDraftTokens = acceptedDraftTokens
    }
}

public enum EngineError: Error, CustomStringConvertible, Equatable {
    case queueFull(waiting: Int)
    case promptTooLong(tokens: Int, limit: Int)
    case invalidRequest(String)
    case shuttingDown

    public var description: String {
        switch self {
        case .queueFull(let w): return "the server is at capacity (\(w) requests waiting); retry later"
        case .promptTooLong(let t, let l): return "the prompt has \(t) tokens, more than this server can hold (\(l))"
        case .invalidRequest(let m): return m
        case .shuttingDown: return "the server is shutting down"
        }
    }
}

/// The reasoning block a constrained output starts with: `open` and `close` token ids
/// (`<think>`, `</think>`); `inside` when the prompt already opened it.
public struct ReasoningGate: Sendable {
    public var open: Int32
    public var close: Int32
    public var inside: Bool

    public init(open: Int32, close: Int32, inside: Bool) {
        self.open = open
        self.close = close
        self.inside = inside
    }
}
