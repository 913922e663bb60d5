import QwenGrammar
import QwenTokenizer

/// What may come next in one sequence's output, and what a chosen token means for it: the
/// request's grammar (structured outputs), the reasoning block a constrained output opens
/// first, and the tokens that end it. The engine asks it to `mask` the logits before
/// sampling and tells it each chosen token with `accept`; it knows nothing of the model.
public struct OutputGate {
    public enum Verdict: Equatable {
        /// The token is part of the output; more may follow.
        case more
        /// The token is part of the output and completes it (the grammar can take nothing else).
        case complete
        /// The token ends the output and is not part of it (an end-of-sequence or stop token id).
        case end
        /// The grammar refused the token (unreachable while masks are right).
        case refused(String)
    }

    let constraint: TokenConstraint?
    let reasoning: ReasoningGate?
    let tokenBytes: [[UInt8]]
    /// Token ids that end the output (not emitted).
    let endTokens: Set<Int32>
    /// Where the output stands in the grammar; nil while a reasoning block comes first
    /// (`reasoningOpen` once it has opened).
    private(set) var grammarState: Matcher.State?
    private(set) var reasoningOpen = false

    init(request r: EngineRequest, tokenizer: Tokenizer) {
        self.init(request: r, endOfSequence: tokenizer.eosTokenIds, tokenBytes: tokenizer.tokenBytes)
    }

    /// `endOfSequence`: the tokenizer's end ids (they end the output unless the request ignores
    /// them); `tokenBytes`: each token's bytes, for the grammar.
    public init(request r: EngineRequest, endOfSequence eos: Set<Int32>, tokenBytes: [[UInt8]]) {
        constraint = r.constraint
        reasoning = r.constraint == nil ? nil : r.reasoningGate
        self.tokenBytes = tokenBytes
        var ends = r.stopTokenIds
        if !r.ignoreEOS || r.constraint != nil { ends.formUnion(eos) }
        endTokens = ends
        if let gate = reasoning {
            reasoningOpen = gate.inside
        } else {
            grammarState = r.constraint?.matcher.start
        }
    }

    /// Sets to −∞ every logit the output may not take next. Log-probabilities are computed
    /// from the raw logits, not from these.
    public func mask(_ l: inout [Float]) {
        guard let constraint else { return }
        if let state = grammarState {
            // Structured output: only tokens the grammar can take (and the end, once it may end).
            Self.apply(constraint.mask(state), to: &l, endIds: constraint.vocabulary.endIds)
        } else if let gate = reasoning {
            // Reasoning first: the block must open, then may say anything but end.
            if reasoningOpen {
                for e in constraint.vocabulary.endIds where Int(e) < l.count { l[Int(e)] = -.infinity }
            } else {
                let keep = l[Int(gate.open)]
                for i in l.indices { l[i] = -.infinity }
                l[Int(gate.open)] = keep.isFinite ? keep : 0
            }
        }
    }

    /// Records that `token` was chosen.
    public mutating func accept(_ token: Int32) -> Verdict {
        if endTokens.contains(token) { return .end }
        guard let constraint else { return .more }
        if grammarState == nil, let gate = reasoning {
            if token == gate.open { reasoningOpen = true }
            if token == gate.close { grammarState = constraint.matcher.start }
            return .more
        }
        guard let state = grammarState else { return .more }
        guard let next = constraint.advance(state, bytes: tokenBytes[Int(token)]) else {
            return .refused("structured output: the grammar refused token \(token); the sequence was stopped")
        }
        grammarState = next
        return next.canContinue ? .more : .complete
    }

    /// Masks `logits` to the tokens `m` allows (−∞ elsewhere).
    static func apply(_ m: TokenMask, to logits: inout [Float], endIds: [Int32]) {
        var saved: [(Int, Float)] = []
        if m.allowEnd { for e in endIds where Int(e) < logits.count { saved.append((Int(e), logits[Int(e)])) } }
        logits.withUnsafeMutableBufferPointer { l in
            m.bits.withUnsafeBufferPointer { bits in
                let n = l.count
                var w = 0
                while w * 64 < n {
                    let word = bits[w]
                    let end = min(n, w * 64 + 64)
                    if word == 0 {
                        for i in (w * 64)..<end { l[i] = -.infinity }
                    } else if word != .max {
                        for i in (w * 64)..<end where word >> UInt64(i & 63) & 1 == 0 { l[i] = -.infinity }
                    }
                    w += 1
                }
            }
        }
        for (i, v) in saved { logits[i] = v }
    }
}
