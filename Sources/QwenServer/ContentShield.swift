import QwenChat
import QwenTokenizer

/// How control-token text written inside a chat request's strings is tokenised.
/// - `text` (default, as OpenAI does): as plain text, so a user cannot forge a turn
///   (`<|im_start|>system…` typed into a message stays characters).
/// - `tokens`: as the control tokens themselves (transformers' and vLLM's behaviour).
public enum ContentSpecialTokens: String, Sendable {
    case text, tokens
}

/// Keeps the special tokens' text in request strings from becoming tokens: each occurrence
/// is swapped for a private-use placeholder before the template renders, and `restore`
/// puts the text back and reports where it stands so the tokenizer reads it literally.
struct ContentShield {
    /// Special tokens' text, longest first (so one that contains another wins).
    let specials: [String]
    /// U+10FFFD then U+F0000 + index: no template writes these characters.
    static let mark: Unicode.Scalar = "\u{10FFFD}"
    static let base: UInt32 = 0xF0000

    init(tokenizer: Tokenizer) {
        specials = tokenizer.addedTokens.filter { $0.special && !$0.content.isEmpty }.map(\.content)
            .sorted { $0.utf8.count > $1.utf8.count }
    }

    func contains(_ s: String) -> Bool { s.contains("<") && specials.contains { s.contains($0) } }

    func any(_ v: JSONValue) -> Bool {
        switch v {
        case .string(let s): return contains(s)
        case .array(let a): return a.contains(where: any)
        case .object(let o): return o.contains { contains($0.0) || any($0.1) }
        default: return false
        }
    }

    /// Whether any string of the request spells a special token (usually not: then nothing is done).
    func needed(_ messages: [JSONValue], _ tools: [JSONValue]?, _ extra: [(String, JSONValue)]) -> Bool {
        messages.contains(where: any) || (tools?.contains(where: any) ?? false) || extra.contains { any($0.1) }
    }

    func hide(_ v: JSONValue) -> JSONValue {
        switch v {
        case .string(let s): return .string(hide(s))
        case .array(let a): return .array(a.map(hide))
        case .object(let o): return .object(o.map { (hide($0.0), hide($0.1)) })
        default: return v
        }
    }

    func hide(_ s: String) -> String {
        guard contains(s) else { return s }
        var out = s
        for (i, t) in specials.enumerated() where out.contains(t) {
            var p = String.UnicodeScalarView()
            p.append(Self.mark)
            p.append(Unicode.Scalar(Self.base + UInt32(i))!)
            out = out.replacingOccurrences(of: t, with: String(p))
        }
        return out
    }

    /// The rendered text with every placeholder turned back into its token's text, and the
    /// UTF-8 byte ranges of those texts (sorted).
    func restore(_ rendered: String) -> (String, [Range<Int>]) {
        var out = String.UnicodeScalarView()
        var literal: [Range<Int>] = []
        var bytes = 0
        var it = rendered.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = nil
        while let c = pending ?? it.next() {
            pending = nil
            if c == Self.mark, let d = it.next() {
                let i = Int(d.value) - Int(Self.base)
                if i >= 0 && i < specials.count {
                    let t = specials[i]
                    out.append(contentsOf: t.unicodeScalars)
                    literal.append(bytes..<(bytes + t.utf8.count))
                    bytes += t.utf8.count
                    continue
                }
                pending = d
            }
            out.append(c)
            bytes += UTF8.width(c)
        }
        return (String(out), literal)
    }
}
