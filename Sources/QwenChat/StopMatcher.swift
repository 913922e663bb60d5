/// Finds stop sequences in streamed text. Text that could still be the start of a stop
/// sequence is held back until the next piece decides it, so a stop string is never
/// emitted, not even in part.
public struct StopMatcher {
    let stops: [String]
    private var pending = ""

    public init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Feeds text; returns what is safe to emit and whether a stop sequence was hit
    /// (in which case the text is cut just before it and nothing more should be fed).
    public mutating func feed(_ text: String) -> (emit: String, stopped: Bool) {
        pending += text
        guard !stops.isEmpty else {
            defer { pending = "" }
            return (pending, false)
        }
        // The earliest complete stop sequence wins.
        var cut: String.Index? = nil
        for s in stops {
            if let r = pending.range(of: s), cut == nil || r.lowerBound < cut! { cut = r.lowerBound }
        }
        if let cut {
            let out = String(pending[..<cut])
            pending = ""
            return (out, true)
        }
        // Hold back the longest suffix that is a prefix of some stop sequence.
        var hold = 0
        let chars = Array(pending)
        for s in stops {
            let sc = Array(s)
            for k in stride(from: min(sc.count - 1, chars.count), to: 0, by: -1) where k > hold {
                if Array(chars[(chars.count - k)...]) == Array(sc[..<k]) { hold = k; break }
            }
        }
        let out = String(chars[..<(chars.count - hold)])
        pending = String(chars[(chars.count - hold)...])
        return (out, false)
    }

    /// At the end of generation: whatever was held back.
    public mutating func flush() -> String {
        defer { pending = "" }
        return pending
    }
}
