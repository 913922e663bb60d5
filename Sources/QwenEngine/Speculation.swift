import Foundation

/// Speculative decoding: how a sequence proposes tokens and how many it proposes.
///
/// Drafts come from prompt lookup (n-gram matching): the sequence's newest tokens are looked
/// for earlier in its own prompt and output (and in a `prediction` the client sent), and the
/// tokens that followed the most recent match are proposed. The target model scores the newest
/// token and every drafted one in one forward; the engine then samples each position in turn
/// as it would without speculation and keeps drafted tokens while they equal what it sampled.
/// For a one-hot draft that is exactly rejection sampling (the draft is accepted with the
/// target's probability of it, and on rejection the token drawn comes from the target's
/// distribution without it), and it takes one random draw per emitted token, so a seeded request
/// gives the same tokens with speculation on or off.
public enum SpeculativeMode: String, Sendable, CaseIterable {
    /// Draft when the cost model expects a gain (the default).
    case auto
    /// Draft whenever a match is found, up to the draft length.
    case ngram
    /// Draft with the draft model (`--draft-model`) every step, up to the draft length.
    case draft
    /// No drafts.
    case off
}

/// A request's choice, overriding the server's.
public struct SpeculativeOptions: Sendable, Equatable {
    public var mode: SpeculativeMode?
    /// Drafted tokens per step at most (nil: the server's).
    public var maxDraftTokens: Int?
    public init(mode: SpeculativeMode? = nil, maxDraftTokens: Int? = nil) {
        self.mode = mode
        self.maxDraftTokens = maxDraftTokens
    }
}

/// Prompt lookup: proposes the tokens that followed an earlier occurrence of the sequence's
/// newest tokens. Of the occurrences of its last `shortest` tokens, the one whose match reaches
/// furthest back wins (the most recent among equals): a long match says the output is copying
/// that passage, and the draft may be as long as asked; a short one is a guess, and the draft is
/// held to `perMatchedToken` tokens per matched token.
public struct PromptLookup: Sendable {
    public var shortest = 2
    /// Matches are measured up to this many tokens back.
    public var longest = 64
    public var perMatchedToken = 2
    public init() {}

    /// Up to `count` tokens that followed the best earlier match of the end of `tokens`, in
    /// `tokens` itself or in `reference` (e.g. the client's predicted output).
    public func draft(_ tokens: [Int32], count: Int, reference: [Int32] = []) -> [Int32] {
        guard count > 0, tokens.count > shortest else { return [] }
        let own = best(in: tokens, limit: tokens.count - 1, of: tokens)
        let ref = reference.isEmpty ? nil : best(in: reference, limit: reference.count, of: tokens)
        let pick: (source: [Int32], at: Int, length: Int)?
        switch (own, ref) {
        case let (a?, b?): pick = b.length > a.length ? (reference, b.at, b.length) : (tokens, a.at, a.length)
        case let (a?, nil): pick = (tokens, a.at, a.length)
        case let (nil, b?): pick = (reference, b.at, b.length)
        case (nil, nil): pick = nil
        }
        guard let p = pick else { return [] }
        let n = min(count, p.length >= longest / 8 ? count : p.length * perMatchedToken, p.source.count - p.at)
        return n > 0 ? Array(p.source[p.at..<(p.at + n)]) : []
    }

    /// In `source`, the position after the occurrence that matches the most of `seq`'s end (at
    /// least `shortest` tokens), among occurrences ending before `limit`, and how far it matches.
    func best(in source: [Int32], limit: Int, of seq: [Int32]) -> (at: Int, length: Int)? {
        let n = shortest
        guard seq.count >= n, source.count >= n, limit >= n else { return nil }
        return source.withUnsafeBufferPointer { s -> (Int, Int)? in
            seq.withUnsafeBufferPointer { q -> (Int, Int)? in
                let last = q[q.count - 1]
                var found: (Int, Int)? = nil
                // e: the index after a candidate occurrence; it must leave a token to propose.
                var e = min(limit, s.count - 1)
                while e >= n {
                    if s[e - 1] == last {
                        var m = 1
                        while m < longest && m < e && m < q.count && s[e - 1 - m] == q[q.count - 1 - m] { m += 1 }
                        if m >= n && m > (found?.1 ?? 0) {
                            found = (e, m)
                            if m >= longest { break }
                        }
                    }
                    e -= 1
                }
                return found
            }
        }
    }
}

/// How many tokens a sequence drafts: a running estimate of how often its drafts are
/// accepted, weighed against what extra rows cost in a step.
public struct DraftPolicy: Sendable {
    /// Recent drafted tokens kept and drafts cut short (each decayed by 0.85 a verification):
    /// the tokens of a draft are accepted one after the other until the first rejection, so a
    /// kept token counts as a success, a rejection as a failure, and what followed it is unseen.
    private var kept: Double
    private var cut: Double
    /// Verifications since the sequence last drafted (to try again after backing off).
    private var idle = 0

    /// `prior`: the acceptance assumed before any draft was verified.
    public init(prior: Double = 0.6) {
        kept = 2 * prior
        cut = 2 * (1 - prior)
    }

    /// The estimated chance that a drafted token is kept.
    public var acceptance: Double { kept / (kept + cut) }

    /// Records a verification: `drafted` tokens proposed, the first `accepted` kept.
    public mutating func record(drafted: Int, accepted: Int) {
        guard drafted > 0 else { return }
        kept = 0.85 * kept + Double(accepted)
        cut = 0.85 * cut + (accepted < drafted ? 1 : 0)
        idle = 0
    }

    /// The draft length that maximizes expected output per unit of step time, when each extra
    /// row costs `rowCost` of a one-row step and `sequences` others share the step: 0 when no
    /// length pays. With `force`, at least one token (up to `limit`) whenever asked.
    public mutating func length(limit: Int, rowCost: Double, sequences: Int, force: Bool) -> Int {
        guard limit > 0 else { return 0 }
        if force { return limit }
        let a = min(max(acceptance, 0), 0.99)
        // A step of R one-row sequences costs 1 + c·(R − 1); k more rows add c·k. Each sequence
        // emits 1 token without drafts, 1 + a + … + a^k with k.
        let r = Double(max(sequences, 1))
        let base = 1 + rowCost * (r - 1)
        var best = 0, bestGain = 1.0
        var expected = 1.0, term = 1.0
        for k in 1...limit {
            term *= a
            expected += term
            let gain = (1 + (expected - 1) / r) / (1 + rowCost * Double(k) / base)
            if gain > bestGain * 1.02 {
                best = k
                bestGain = gain
            }
        }
        if best == 0 {
            // Backed off: try one token now and then, so a sequence whose output turns to copying
            // is noticed.
            idle += 1
            if idle >= 16 && sequences <= 2 {
                idle = 0
                return 1
            }
        }
        return best
    }
}
