import Foundation

/// Log-probabilities from raw logits (before penalties and temperature), as OpenAI reports them.
enum Logprobs {
    static func compute(_ logits: [Float], chosen: Int32, top k: Int) -> (Float, [TokenLogprob]) {
        var m = -Float.infinity
        for v in logits where v > m { m = v }
        var sum: Float = 0
        for v in logits { sum += expf(v - m) }
        let lse = m + logf(sum)
        var top: [TokenLogprob] = []
        if k > 0 {
            // A small sorted window: k ≤ 20.
            var best: [(Float, Int32)] = []
            best.reserveCapacity(k + 1)
            for (i, v) in logits.enumerated() where best.count < k || v > best[best.count - 1].0 {
                var j = best.count
                while j > 0 && best[j - 1].0 < v { j -= 1 }
                best.insert((v, Int32(i)), at: j)
                if best.count > k { best.removeLast() }
            }
            top = best.map { TokenLogprob(token: $0.1, logprob: $0.0 - lse) }
        }
        return (logits[Int(chosen)] - lse, top)
    }
}
