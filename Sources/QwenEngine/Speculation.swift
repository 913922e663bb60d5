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

/// Prompt lookup: proposes the tokens that followed the latest earlier occurrence of the
/// sequence's last n tokens (n from `longest` down to `shortest`).
public struct PromptLookup: Sendable {
    public var longest = 3
    public var shortest = 2
    public init() {}

    /// Up to `count` tokens that followed the most recent earlier match of the last n tokens of
    /// `tokens` (or, failing that, of them in `reference`, e.g. the client's predicted output).
    public func draft(_ tokens: [Int32], count: Int, reference: [Int32] = []) -> [Int32] {
        guard count > 0 else { return [] }
        for n in stride(from: longest, through: shortest, by: -1) where tokens.count > n {
            let end = tokens.count
            if let d = Self.follow(tokens, pattern: tokens[(end - n)..<end], before: end - n, count: count), !d.isEmpty {
                return d
            }
            if let d = Self.follow(reference, pattern: tokens[(end - n)..<end], before: reference.count, count: count), !d.isEmpty {
                return d
            }
        }
        return []
    }

    /// The tokens after the latest occurrence of `pattern` in `source` that starts before `before`.
    static func follow(_ source: [Int32], pattern: ArraySlice<Int32>, before: Int, count: Int) -> [Int32]? {
        let n = pattern.count
        guard n > 0, source.count > n else { return nil }
        let first = pattern[pattern.startIndex]
        return source.withUnsafeBufferPointer { s -> [Int32]? in
            // A match must leave at least one token after it.
            var i = min(before - 1, s.count - n - 1)
            while i >= 0 {
                if s[i] == first {
                    var k = 1
                    while k < n && s[i + k] == pattern[pattern.startIndex + k] { k += 1 }
                    if k == n {
                        let from = i + n
                        return Array(s[from..<min(s.count, from + count)])
                    }
                }
                i -= 1
            }
            return nil
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
