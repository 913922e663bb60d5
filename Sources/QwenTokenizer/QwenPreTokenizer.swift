/// Qwen's pre-tokenizer: the split that the regular expression
///   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
/// makes, written out as a scanner over Unicode scalars (the same leftmost-first choice
/// among alternatives, the same greedy runs and backtracking).
public enum QwenPreTokenizer {
    /// The regular expression that tokenizer.json files carry for this split.
    public static let pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    enum Kind { case letter, number, space, other }

    @inline(__always)
    static func kind(_ s: Unicode.Scalar) -> Kind {
        if s.value < 128 {
            let v = s.value
            if (v >= 65 && v <= 90) || (v >= 97 && v <= 122) { return .letter }
            if v >= 48 && v <= 57 { return .number }
            if v == 32 || (v >= 9 && v <= 13) { return .space }
            return .other
        }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return s.properties.isWhitespace ? .space : .other
        }
    }

    @inline(__always) static func isNewline(_ s: Unicode.Scalar) -> Bool { s == "\r" || s == "\n" }

    /// The pieces of `text`, as ranges of its scalar array.
    public static func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        var pieces: [Range<Int>] = []
        let n = scalars.count
        let kinds = scalars.map(kind)
        var i = 0
        while i < n {
            let end = match(scalars, kinds, i)
            pieces.append(i..<end)
            i = end
        }
        return pieces
    }

    static func match(_ s: [Unicode.Scalar], _ k: [Kind], _ i: Int) -> Int {
        let n = s.count
        // 1. Contractions, case-insensitively.
        if s[i] == "'" && i + 1 < n {
            let c1 = lower(s[i + 1])
            if c1 == "s" || c1 == "t" || c1 == "m" || c1 == "d" { return i + 2 }
            if i + 2 < n {
                let c2 = lower(s[i + 2])
                if (c1 == "r" && c2 == "e") || (c1 == "v" && c2 == "e") || (c1 == "l" && c2 == "l") { return i + 3 }
            }
        }
        // 2. An optional non-letter, non-digit, non-newline, then letters.
        if k[i] == .letter {
            return run(k, from: i + 1, of: .letter)
        }
        if !isNewline(s[i]) && k[i] != .number && i + 1 < n && k[i + 1] == .letter {
            return run(k, from: i + 2, of: .letter)
        }
        // 3. One digit.
        if k[i] == .number { return i + 1 }
        // 4. An optional space, symbols, then newlines.
        var j = i
        if s[i] == " " && i + 1 < n && k[i + 1] == .other { j = i + 1 }
        if k[j] == .other {
            var e = run(k, from: j + 1, of: .other)
            while e < n && isNewline(s[e]) { e += 1 }
            return e
        }
        // What is left starts with white space.
        let wsEnd = run(k, from: i + 1, of: .space)
        // 5. White space up to and including its last newline.
        var lastNewline = -1
        for p in i..<wsEnd where isNewline(s[p]) { lastNewline = p }
        if lastNewline >= 0 { return lastNewline + 1 }
        // 6. White space not followed by a non-space: all of it at the end of the text,
        //    otherwise all but the last one.
        if wsEnd == n { return wsEnd }
        if wsEnd - 1 > i { return wsEnd - 1 }
        // 7. A single white-space character.
        return wsEnd
    }

    @inline(__always) static func run(_ k: [Kind], from: Int, of kind: Kind) -> Int {
        var e = from
        while e < k.count && k[e] == kind { e += 1 }
        return e
    }

    @inline(__always) static func lower(_ c: Unicode.Scalar) -> Unicode.Scalar {
        (c.value >= 65 && c.value <= 90) ? Unicode.Scalar(c.value + 32)! : c
    }
}
