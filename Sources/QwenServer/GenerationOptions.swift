import QwenChat
import QwenEngine
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
    /// Speculative decoding for this request (the `speculative` extension), nil: the server's.
    var speculative: SpeculativeOptions?
    /// OpenAI's `prediction` (`{"type": "content", "content": …}`): text the output is expected
    /// to repeat much of, a source of drafts.
    var prediction: String?

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
        o.speculative = try parseSpeculative(f.body["speculative"])
        o.prediction = try parsePrediction(f.body["prediction"])
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

    /// `"speculative": true | false | {"mode": "auto" | "ngram" | "draft" | "off", "max_draft_tokens": 1…64}`
    /// (`true`: prompt lookup, forced on).
    static func parseSpeculative(_ v: JSONValue?) throws -> SpeculativeOptions? {
        guard let v, !v.isNull else { return nil }
        if let b = v.bool { return SpeculativeOptions(mode: b ? .ngram : .off) }
        guard let o = v.object else {
            throw APIError.badParam("speculative", "'speculative' must be a boolean or an object with 'mode' and 'max_draft_tokens'")
        }
        var r = SpeculativeOptions()
        for (k, x) in o {
            switch k {
            case "mode":
                guard let s = x.string, let m = SpeculativeMode(rawValue: s) else {
                    throw APIError.badParam("speculative", "'speculative.mode' must be one of \(SpeculativeMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                r.mode = m
            case "max_draft_tokens":
                guard let n = x.int, (1...64).contains(n) else {
                    throw APIError.badParam("speculative", "'speculative.max_draft_tokens' must be an integer from 1 to 64")
                }
                r.maxDraftTokens = n
            default:
                throw APIError.badParam("speculative", "'speculative' has an unknown field '\(k)' (it takes 'mode' and 'max_draft_tokens')")
            }
        }
        return r
    }

    /// OpenAI's `prediction`: `{"type": "content", "content": string | [{"type": "text", "text": …}]}`.
    static func parsePrediction(_ v: JSONValue?) throws -> String? {
        guard let v, !v.isNull else { return nil }
        guard v.object != nil, v["type"]?.string == "content", let c = v["content"] else {
            throw APIError.badParam("prediction", "'prediction' must be {\"type\": \"content\", \"content\": …}")
        }
        if let s = c.string { return s }
        if let parts = c.array {
            var text = ""
            for p in parts {
                guard p["type"]?.string == "text", let t = p["text"]?.string else {
                    throw APIError.badParam("prediction", "'prediction.content' parts must be {\"type\": \"text\", \"text\": …}")
                }
                text += t
            }
            return text
        }
        throw APIError.badParam("prediction", "'prediction.content' must be a string or a list of text parts")
    }
}
