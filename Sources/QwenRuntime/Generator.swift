import QwenModel
import QwenTokenizer

/// One sequence, generated token by token with a KV cache: the single-stream path
/// that the command line uses.
public struct Generator {
    public let model: QwenModel
    public let tokenizer: Tokenizer
    /// A LoRA adapter applied to every step, or nil for the base model.
    public let adapter: LoRAAdapter?
    /// How the sequence's KV cache stores keys and values.
    public var kvDType: KVCacheDType = .f32

    public init(model: QwenModel, tokenizer: Tokenizer, adapter: LoRAAdapter? = nil) {
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
    }

    public enum FinishReason: String, Sendable { case stop, length }

    public struct Result: Sendable {
        public var tokens: [Int32] = []
        public var text = ""
        public var finishReason: FinishReason = .length
        public var promptTokens = 0
        public var prefillSeconds = 0.0
        public var decodeSeconds = 0.0
    }

    /// Generates up to `maxTokens` after `prompt`. `onText` receives text as it becomes
    /// complete UTF-8; returning false stops generation.
    public func generate(prompt: [Int32], maxTokens: Int, params: SamplingParams, ignoreEOS: Bool = false,
                         prefillChunk: Int = 512, onText: (String) -> Bool = { _ in true }) throws -> Result {
        var result = Result()
        result.promptTokens = prompt.count
        guard !prompt.isEmpty else { return result }
        let cache = KVCache(config: model.config, capacity: prompt.count + maxTokens, dtype: kvDType)
        var sampler = Sampler(params: params)
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        let clock = ContinuousClock()
        var t0 = clock.now
        var logits: [Float] = []
        var start = 0
        while start < prompt.count {
            let end = min(start + prefillChunk, prompt.count)
            logits = try model.forward([.init(cache: cache, tokens: Array(prompt[start..<end]), logits: end == prompt.count ? .last : .none,
                                             adapter: adapter)])[0]
            start = end
        }
        result.prefillSeconds = Self.seconds(clock.now - t0)
        t0 = clock.now
        while result.tokens.count < maxTokens {
            sampler.adjust(&logits, history: result.tokens)
            let next = sampler.sample(logits)
            if !ignoreEOS && tokenizer.eosTokenIds.contains(next) {
                result.finishReason = .stop
                break
            }
            result.tokens.append(next)
            let piece = decoder.push(next)
            result.text += piece
            if !piece.isEmpty && !onText(piece) {
                result.finishReason = .stop
                break
            }
            if result.tokens.count == maxTokens { break }
            logits = try model.forward([.init(cache: cache, tokens: [next], adapter: adapter)])[0]
        }
        let tail = decoder.flush()
        if !tail.isEmpty {
            result.text += tail
            _ = onText(tail)
        }
        result.decodeSeconds = Self.seconds(clock.now - t0)
        return result
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    }
}
