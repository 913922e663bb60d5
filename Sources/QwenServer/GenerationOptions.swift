import QwenChat
import QwenRuntime

/// The sampling and output options shared by /v1/chat/completions and /v1/completions.
struct GenerationOptions {
    var params = SamplingParams(temperature: 1)
    var maxTokens: Int?
    var n = 1
    var stops: [String] = []
    var stream = false
    var includeUsage = false
    var ignoreEOS = false
    /// nil: no logprobs; k: the chosen token's and the top k.
    var logprobs: Int?
    var echo = false

    static func parse(_ f: RequestFields, chat: Bool, vocabSize: Int) throws -> GenerationOptions {
        var o = GenerationOptions()
        var p = SamplingParams(temperature: 1)
        if let t = try f.number("temperature", 0...2) { p.temperature = Float(t) }
        if let v = try f.number("top_p", 0...1) {
            guard v > 0 else { throw APIError.badParam("top_p", "'top_p' must be greater than 0") }
            p.topP = Float(v)
        }
        if let k = try f.int("top_k", -1...1_000_000) { p.topK = max(k, 0) }
        if let v = try f.number("min_p", 0...1) { p.minP = Float(v) }
        if let v = try f.number("presence_penalty", -2...2) { p.presencePenalty = Float(v) }
        if let v = try f.number("frequency_penalty", -2...2) { p.frequencyPenalty = Float(v) }
        if let v = try f.number("repetition_penalty", 0...10) {
            // Below 0.01 the penalty divides logits by almost nothing (1e-300 is 0 in f32).
            guard v >= 0.01 else { throw APIError.badParam("repetition_penalty", "'repetition_penalty' must be at least 0.01") }
            p.repetitionPenalty = Float(v)
        }
        if let s = f.body["seed"], !s.isNull {
            guard let i = s.int else { throw APIError.badParam("seed", "'seed' must be an integer") }
            p.seed = UInt64(bitPattern: Int64(i))
        }
        if let lb = f.body["logit_bias"], !lb.isNull {
            guard let pairs = lb.object else { throw APIError.badParam("logit_bias", "'logit_bias' must be an object of token id to bias") }
            for (k, v) in pairs {
                guard let id = Int32(k), id >= 0, Int(id) < vocabSize else {
                    throw APIError.badParam("logit_bias", "'logit_bias' key \(k) is not a token id of this model (0..<\(vocabSize))")
                }
                guard let b = v.double, (-100...100).contains(b) else {
                    throw APIError.badParam("logit_bias", "'logit_bias' values must be numbers between -100 and 100")
                }
                p.logitBias[id] = Float(b)
            }
        }
        o.params = p
        let maxA = try f.int("max_tokens", 1...Int(Int32.max))
        let maxB = chat ? try f.int("max_completion_tokens", 1...Int(Int32.max)) : nil
        o.maxTokens = maxB ?? maxA
        o.n = try f.int("n", 1...16) ?? 1
        o.stops = try f.stops()
        o.stream = try f.bool("stream") ?? false
        if let so = f.body["stream_options"], !so.isNull {
            guard so.object != nil else { throw APIError.badParam("stream_options", "'stream_options' must be an object") }
            guard o.stream else { throw APIError.badParam("stream_options", "'stream_options' is only allowed when 'stream' is true") }
            if let u = so["include_usage"], !u.isNull {
                guard let b = u.bool else { throw APIError.badParam("stream_options", "'stream_options.include_usage' must be a boolean") }
                o.includeUsage = b
            }
        }
        o.ignoreEOS = try f.bool("ignore_eos") ?? false
        if chat {
            let lp = try f.bool("logprobs") ?? false
            let top = try f.int("top_logprobs", 0...20)
            if top != nil && !lp { throw APIError.badParam("top_logprobs", "'top_logprobs' requires 'logprobs': true") }
            o.logprobs = lp ? (top ?? 0) : nil
        } else {
            o.logprobs = try f.int("logprobs", 0...20)
            o.echo = try f.bool("echo") ?? false
        }
        return o
    }
}
