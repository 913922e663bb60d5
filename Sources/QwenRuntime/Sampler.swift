import Foundation

/// How the next token is chosen. Temperature 0 is greedy.
public struct SamplingParams: Sendable, Equatable {
    public var temperature: Float = 1
    public var topK: Int = 0  // 0: off
    public var topP: Float = 1
    public var minP: Float = 0
    public var repetitionPenalty: Float = 1
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    public var logitBias: [Int32: Float] = [:]
    public var seed: UInt64?

    public init(temperature: Float = 1, topK: Int = 0, topP: Float = 1, minP: Float = 0, seed: UInt64? = nil) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.seed = seed
    }

    public static let greedy = SamplingParams(temperature: 0)
}

/// xoshiro256** seeded through splitmix64: the same seed gives the same stream everywhere.
public struct SeededRandom: RandomNumberGenerator {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var x = seed
        func next() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (next(), next(), next(), next())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// A uniform float in [0, 1).
    public mutating func unit() -> Float { Float(next() >> 40) / Float(1 << 24) }
}

/// Picks tokens from logits with one request's parameters; keeps the request's RNG.
public struct Sampler {
    public let params: SamplingParams
    private var rng: SeededRandom

    public init(params: SamplingParams) {
        self.params = params
        rng = SeededRandom(seed: params.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    /// Applies penalties and logit bias to `logits` in place, given the tokens generated so far.
    public func adjust(_ logits: inout [Float], history: [Int32]) {
        let p = params
        if p.repetitionPenalty != 1 || p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            var counts: [Int32: Int] = [:]
            for t in history { counts[t, default: 0] += 1 }
            for (t, n) in counts where Int(t) < logits.count {
                var l = logits[Int(t)]
                if p.repetitionPenalty != 1 { l = l > 0 ? l / p.repetitionPenalty : l * p.repetitionPenalty }
                l -= p.presencePenalty + p.frequencyPenalty * Float(n)
                logits[Int(t)] = l
            }
        }
        for (t, b) in p.logitBias where t >= 0 && Int(t) < logits.count { logits[Int(t)] += b }
    }

    /// The next token, or nil when a logit is NaN or +infinity (no distribution to sample).
    public mutating func sampleIfFinite(_ logits: [Float]) -> Int32? {
        for l in logits where l.isNaN || l == .infinity { return nil }
        return sample(logits)
    }

    /// The next token. `logits` already carries penalties and bias.
    public mutating func sample(_ logits: [Float]) -> Int32 {
        let p = params
        if p.temperature <= 0 || p.topK == 1 { return Self.argmax(logits) }
        let invT = 1 / p.temperature
        var maxL = -Float.infinity
        for l in logits where l > maxL { maxL = l }
        if p.topK <= 0 && p.topP >= 1 && p.minP <= 0 {
            // Plain temperature sampling needs no order: two passes over the logits (sorting
            // every token within reach, as truncation must, costs milliseconds per token).
            var total: Float = 0
            for l in logits where l > -.infinity { total += expf((l - maxL) * invT) }
            var r = rng.unit() * total
            var last = Self.argmax(logits)
            for (i, l) in logits.enumerated() where l > -.infinity {
                r -= expf((l - maxL) * invT)
                last = Int32(i)
                if r < 0 { return last }
            }
            return last
        }
        // Candidates: a cheap pre-filter keeps tokens within reach of the maximum
        // (exp(-30) is far below any usable probability), then they are sorted.
        var cand: [(id: Int32, p: Float)] = []
        cand.reserveCapacity(1024)
        let floor = maxL - 30 * p.temperature
        for (i, l) in logits.enumerated() where l >= floor {
            cand.append((Int32(i), expf((l - maxL) * invT)))
        }
        var total: Float = 0
        for c in cand { total += c.p }
        // Only the head of the order is ever used: a histogram of the candidates (by log
        // probability, 256 bins over the 30 nats kept) finds the bin where the top-k count or
        // the top-p mass is reached, and only the candidates down to that bin are sorted.
        if cand.count > 512 && (p.topK > 0 || p.topP < 1) {
            var count = [Int](repeating: 0, count: 256), mass = [Float](repeating: 0, count: 256)
            func bin(_ x: Float) -> Int { min(255, max(0, Int(-logf(x) * (256 / 30)))) }
            for c in cand {
                let b = bin(c.p)
                count[b] += 1
                mass[b] += c.p
            }
            var n = 0, acc: Float = 0, last = 255
            for b in 0..<256 {
                n += count[b]
                acc += mass[b]
                if (p.topK > 0 && n >= p.topK) || (p.topK <= 0 && acc >= p.topP * total) { last = b; break }
            }
            if last < 255 { cand.removeAll { bin($0.p) > last } }
        }
        if p.minP > 0 && p.topK <= 0 {
            // min-p keeps what is within minP of the most likely token (whose weight is 1).
            cand.removeAll { $0.p < p.minP }
        }
        cand.sort { $0.p > $1.p || ($0.p == $1.p && $0.id < $1.id) }
        if p.topK > 0 {
            if cand.count > p.topK { cand.removeSubrange(p.topK...) }
            // top-p then applies within the top k (renormalised).
            total = 0
            for c in cand { total += c.p }
        }
        if p.topP < 1 {
            var acc: Float = 0
            var keep = cand.count
            for (i, c) in cand.enumerated() {
                acc += c.p / total
                if acc >= p.topP { keep = i + 1; break }
            }
            cand.removeSubrange(keep...)
        }
        if p.minP > 0, let top = cand.first?.p {
            let threshold = top * p.minP
            cand.removeAll { $0.p < threshold }
        }
        total = 0
        for c in cand { total += c.p }
        var r = rng.unit() * total
        for c in cand {
            r -= c.p
            if r < 0 { return c.id }
        }
        return cand.last?.id ?? Self.argmax(logits)
    }

    public static func argmax(_ logits: [Float]) -> Int32 {
        var best = 0
        var bestV = -Float.infinity
        for (i, v) in logits.enumerated() where v > bestV {
            bestV = v
            best = i
        }
        return Int32(best)
    }
}
