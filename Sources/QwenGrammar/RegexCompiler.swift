/// Compiles a regular expression (the ECMAScript subset JSON Schema's `pattern` uses) into
/// grammar nodes over JSON string characters: the string's characters, unescaped, must match
/// the whole expression. A leading `^` and trailing `$` are accepted (matching is whole
/// anyway); look-arounds, back-references and anchors inside are refused.
///
/// Supported: literals, `.`, classes `[...]` with ranges and negation, `\d \D \w \W \s \S`,
/// escapes (`\n \t \r \f \v \0 \xHH \uHHHH \u{...}` and escaped punctuation), groups `(...)`,
/// `(?:...)`, named groups, alternation, and the quantifiers `? * + {n} {n,} {n,m}` (lazy
/// forms too: laziness does not change which strings match).
public struct RegexCompiler {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Repetition bounds above this are refused: `{n,m}` unrolls into counted states.
    public static let maxRepeat = 1000

    var scalars: [UInt32]
    var i = 0
    var builder: GrammarBuilder
    /// Plain text (the `regex` request field) rather than a JSON string's characters.
    var raw = false

    /// Compiles `pattern` into `builder`, returning the node that matches it: over a JSON
    /// string's (escaped) characters, or over plain text when `raw`.
    public static func compile(_ pattern: String, into builder: inout GrammarBuilder, raw: Bool = false) throws -> Int {
        var c = RegexCompiler(scalars: pattern.unicodeScalars.map(\.value), builder: builder, raw: raw)
        if c.peek == 0x5E { c.i += 1 }  // ^
        let node = try c.alternation()
        if c.peek == 0x24 { c.i += 1 }  // $
        guard c.i == c.scalars.count else {
            throw Failure(description: c.peek == 0x29 ? "unbalanced ')' in the pattern" : "the pattern has an unsupported construct at offset \(c.i)")
        }
        builder = c.builder
        return node
    }

    var peek: UInt32? { i < scalars.count ? scalars[i] : nil }

    mutating func next() throws -> UInt32 {
        guard i < scalars.count else { throw Failure(description: "the pattern ends too early") }
        defer { i += 1 }
        return scalars[i]
    }

    var depth = 0

    mutating func alternation() throws -> Int {
        depth += 1
        defer { depth -= 1 }
        guard depth <= 64 else { throw Failure(description: "the pattern nests groups more than 64 deep") }
        var options = [try sequence()]
        while peek == 0x7C {  // |
            i += 1
            options.append(try sequence())
        }
        return try builder.alt(options)
    }

    mutating func sequence() throws -> Int {
        var parts: [Int] = []
        while let c = peek, c != 0x7C, c != 0x29 {
            if c == 0x24, i == scalars.count - 1 { break }  // a final $
            let atom = try self.atom()
            parts.append(try quantified(atom))
        }
        return parts.isEmpty ? try builder.empty() : try builder.seq(parts)
    }

    mutating func quantified(_ atom: Int) throws -> Int {
        var node = atom
        while let c = peek {
            var lo = 0, hi: Int? = nil
            switch c {
            case 0x3F: lo = 0; hi = 1; i += 1  // ?
            case 0x2A: lo = 0; hi = nil; i += 1  // *
            case 0x2B: lo = 1; hi = nil; i += 1  // +
            case 0x7B:  // {
                let save = i
                guard let (a, b) = try braces() else { i = save; return node }
                lo = a; hi = b
            default: return node
            }
            if peek == 0x3F { i += 1 }  // lazy
            guard lo <= Self.maxRepeat, (hi ?? 0) <= Self.maxRepeat else {
                throw Failure(description: "a repetition count in the pattern is above \(Self.maxRepeat)")
            }
            if let hi, hi < lo { throw Failure(description: "a repetition {\(lo),\(hi)} in the pattern has its bounds reversed") }
            node = try builder.add(.rep(node, min: lo, max: hi))
        }
        return node
    }

    /// `{n}`, `{n,}`, `{n,m}`; nil when the brace is a literal.
    mutating func braces() throws -> (Int, Int?)? {
        i += 1
        func number() -> Int? {
            var v: Int? = nil
            while let c = peek, (0x30...0x39).contains(c) {
                v = min((v ?? 0) * 10 + Int(c - 0x30), 1_000_000)
                i += 1
            }
            return v
        }
        guard let lo = number() else { return nil }
        if peek == 0x7D { i += 1; return (lo, lo) }
        guard peek == 0x2C else { return nil }
        i += 1
        let hi = number()
        guard peek == 0x7D else { return nil }
        i += 1
        return (lo, hi)
    }

    mutating func atom() throws -> Int {
        let c = try next()
        switch c {
        case 0x28:  // (
            if peek == 0x3F {  // (?
                i += 1
                let k = try next()
                if k == 0x3A {  // (?:
                } else if k == 0x3C, let n = peek, n != 0x3D, n != 0x21 {  // (?<name>
                    while let x = peek, x != 0x3E { i += 1 }
                    guard peek == 0x3E else { throw Failure(description: "an unterminated group name in the pattern") }
                    i += 1
                } else {
                    throw Failure(description: "look-around assertions ((?=, (?!, (?<=, (?<!) are not supported in a pattern")
                }
            }
            let inner = try alternation()
            guard peek == 0x29 else { throw Failure(description: "an unclosed '(' in the pattern") }
            i += 1
            return inner
        case 0x5B: return try char(try characterClass())
        case 0x2E: return try char(.dot)
        case 0x5C: return try char(try escape(inClass: false))
        case 0x5E, 0x24: throw Failure(description: "anchors ('^', '$') are supported only at the pattern's start and end")
        case 0x2A, 0x2B, 0x3F: throw Failure(description: "a quantifier in the pattern has nothing to repeat")
        case 0x29: throw Failure(description: "unbalanced ')' in the pattern")
        default: return try char(CodePointSet([c]))
        }
    }

    mutating func char(_ set: CodePointSet) throws -> Int {
        guard !set.isEmpty else { throw Failure(description: "a character class in the pattern matches nothing") }
        return try builder.add(raw ? .rawChar(set) : .char(set, run: false))
    }

    /// After a backslash.
    mutating func escape(inClass: Bool) throws -> CodePointSet {
        let c = try next()
        switch c {
        case 0x64: return .digits  // d
        case 0x44: return CodePointSet.digits.complement
        case 0x77: return .word  // w
        case 0x57: return CodePointSet.word.complement
        case 0x73: return .space  // s
        case 0x53: return CodePointSet.space.complement
        case 0x6E: return CodePointSet([0x0A])
        case 0x74: return CodePointSet([0x09])
        case 0x72: return CodePointSet([0x0D])
        case 0x66: return CodePointSet([0x0C])
        case 0x76: return CodePointSet([0x0B])
        case 0x30: return CodePointSet([0])
        case 0x62 where inClass: return CodePointSet([0x08])
        case 0x62, 0x42: throw Failure(description: "word boundaries (\\b, \\B) are not supported in a pattern")
        case 0x31...0x39: throw Failure(description: "back-references are not supported in a pattern")
        case 0x78: return CodePointSet([try hex(2)])  // x
        case 0x75:  // u
            if peek == 0x7B {
                i += 1
                var v: UInt32 = 0, n = 0
                while let d = peek, d != 0x7D {
                    guard let h = Matcher.hexValue(UInt8(truncatingIfNeeded: d)), d < 0x80, n < 6 else {
                        throw Failure(description: "a bad \\u{...} escape in the pattern")
                    }
                    v = v << 4 | UInt32(h); n += 1; i += 1
                }
                guard peek == 0x7D, n > 0 else { throw Failure(description: "a bad \\u{...} escape in the pattern") }
                i += 1
                return CodePointSet([v])
            }
            return CodePointSet([try hex(4)])
        case 0x70, 0x50: throw Failure(description: "Unicode property escapes (\\p, \\P) are not supported in a pattern")
        case 0x6B: throw Failure(description: "named back-references (\\k) are not supported in a pattern")
        case 0x63: throw Failure(description: "control escapes (\\c) are not supported in a pattern")
        default:
            // Escaped punctuation (and any other character) stands for itself.
            guard !((0x41...0x5A).contains(c) || (0x61...0x7A).contains(c)) else {
                throw Failure(description: "the escape '\\\(Character(Unicode.Scalar(c)!))' is not supported in a pattern")
            }
            return CodePointSet([c])
        }
    }

    mutating func hex(_ n: Int) throws -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<n {
            let d = try next()
            guard d < 0x80, let h = Matcher.hexValue(UInt8(d)) else { throw Failure(description: "a bad hexadecimal escape in the pattern") }
            v = v << 4 | UInt32(h)
        }
        return v
    }

    /// After `[`.
    mutating func characterClass() throws -> CodePointSet {
        var negated = false
        if peek == 0x5E { negated = true; i += 1 }
        var set = CodePointSet(ranges: [])
        var first = true
        while true {
            guard let c = peek else { throw Failure(description: "an unclosed '[' in the pattern") }
            if c == 0x5D && !first { i += 1; break }
            if c == 0x5D && first { i += 1; set = set.union(CodePointSet([c])); first = false; continue }
            first = false
            let lo = try classAtom()
            if peek == 0x2D, i + 1 < scalars.count, scalars[i + 1] != 0x5D {
                i += 1
                let hi = try classAtom()
                guard let a = lo.single, let b = hi.single else {
                    throw Failure(description: "a range in a character class of the pattern has a class at one end")
                }
                guard a <= b else { throw Failure(description: "a range in a character class of the pattern is out of order") }
                set = set.union(CodePointSet(ranges: [a...b]))
            } else {
                set = set.union(lo)
            }
        }
        return negated ? set.complement : set
    }

    mutating func classAtom() throws -> CodePointSet {
        let c = try next()
        if c == 0x5C { return try escape(inClass: true) }
        if c == 0x5B, peek == 0x3A { throw Failure(description: "POSIX classes ([:alpha:]) are not supported in a pattern") }
        return CodePointSet([c])
    }
}

extension CodePointSet {
    /// The only member, when there is exactly one.
    var single: UInt32? { ranges.count == 1 && ranges[0].lowerBound == ranges[0].upperBound ? ranges[0].lowerBound : nil }
}
