/// A grammar over bytes, as a graph of nodes: what constrained decoding compiles JSON
/// Schemas, regular expressions and tool calls to, and what `Matcher` runs.
///
/// Nodes refer to each other by index, so recursion (`$ref`) is a cycle in the graph. Two
/// leaves know JSON: `char` reads one JSON string character (raw UTF-8 or an escape) whose
/// code point is in a set, and `number` reads a JSON number within bounds. Every other leaf
/// is plain bytes.
public enum GrammarNode: Sendable, Equatable {
    /// One byte of the set.
    case byteSet(ByteSet)
    /// These bytes, in order.
    case literal([UInt8])
    case seq([Int])
    case alt([Int])
    /// The child `min` to `max` (nil: unbounded) times.
    case rep(Int, min: Int, max: Int?)
    /// The child, which must read between `min` and `max` JSON string characters (the `char`
    /// leaves inside it count toward the nearest enclosing `counted`).
    case counted(Int, min: Int, max: Int?)
    /// One JSON string character whose code point is in the set. `run` marks the body of an
    /// unconstrained run of characters (a string with no pattern), which lets the token masker
    /// admit whole plain-text tokens at once.
    case char(CodePointSet, run: Bool)
    /// One character of plain text (UTF-8, no escaping) whose code point is in the set.
    case rawChar(CodePointSet)
    case number(NumberSpec)
}

/// 256 bits: which bytes a `byteSet` leaf takes.
public struct ByteSet: Sendable, Hashable {
    var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    public init(_ bytes: some Sequence<UInt8>) { for b in bytes { insert(b) } }

    public init(_ s: String) { self.init(Array(s.utf8)) }

    public mutating func insert(_ b: UInt8) {
        let bit = UInt64(1) << UInt64(b & 63)
        switch b >> 6 {
        case 0: words.0 |= bit
        case 1: words.1 |= bit
        case 2: words.2 |= bit
        default: words.3 |= bit
        }
    }

    public func contains(_ b: UInt8) -> Bool {
        let w: UInt64
        switch b >> 6 {
        case 0: w = words.0
        case 1: w = words.1
        case 2: w = words.2
        default: w = words.3
        }
        return w >> UInt64(b & 63) & 1 == 1
    }

    public static func == (a: ByteSet, b: ByteSet) -> Bool { a.words == b.words }
    public func hash(into h: inout Hasher) { h.combine(words.0); h.combine(words.1); h.combine(words.2); h.combine(words.3) }
}

/// A set of Unicode scalar values (surrogates never belong), as sorted disjoint ranges.
public struct CodePointSet: Sendable, Hashable {
    public private(set) var ranges: [ClosedRange<UInt32>]

    public static let maxScalar: UInt32 = 0x10FFFF
    /// Every scalar value.
    public static let all = CodePointSet(ranges: [0...maxScalar])
    /// What ECMAScript's `.` matches: everything but line terminators.
    public static let dot = all.subtracting([0x0A, 0x0D, 0x2028, 0x2029])
    public static let digits = CodePointSet(ranges: [0x30...0x39])
    public static let word = CodePointSet(ranges: [0x30...0x39, 0x41...0x5A, 0x5F...0x5F, 0x61...0x7A])
    public static let space = CodePointSet(ranges: [0x09...0x0D, 0x20...0x20, 0xA0...0xA0, 0x1680...0x1680, 0x2000...0x200A,
                                                   0x2028...0x2029, 0x202F...0x202F, 0x205F...0x205F, 0x3000...0x3000, 0xFEFF...0xFEFF])

    public init(ranges: [ClosedRange<UInt32>]) {
        // Sort, merge, clip to the scalar range and cut the surrogates out.
        var out: [ClosedRange<UInt32>] = []
        for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            guard r.lowerBound <= Self.maxScalar else { continue }
            let r = r.lowerBound...min(r.upperBound, Self.maxScalar)
            if let last = out.last, r.lowerBound <= last.upperBound &+ 1 {
                out[out.count - 1] = last.lowerBound...max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        var clean: [ClosedRange<UInt32>] = []
        for r in out {
            if r.upperBound < 0xD800 || r.lowerBound > 0xDFFF { clean.append(r); continue }
            if r.lowerBound < 0xD800 { clean.append(r.lowerBound...0xD7FF) }
            if r.upperBound > 0xDFFF { clean.append(0xE000...r.upperBound) }
        }
        self.ranges = clean
    }

    public init(_ scalars: [UInt32]) { self.init(ranges: scalars.map { $0...$0 }) }

    public var isEmpty: Bool { ranges.isEmpty }
    public var isAll: Bool { self == Self.all }

    public func contains(_ c: UInt32) -> Bool {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound < c { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count && ranges[lo].lowerBound <= c
    }

    /// Whether some member lies in lo...hi.
    public func intersects(_ lo: UInt32, _ hi: UInt32) -> Bool {
        guard lo <= hi else { return false }
        var a = 0, b = ranges.count
        while a < b {
            let mid = (a + b) / 2
            if ranges[mid].upperBound < lo { a = mid + 1 } else { b = mid }
        }
        return a < ranges.count && ranges[a].lowerBound <= hi
    }

    public func union(_ o: CodePointSet) -> CodePointSet { CodePointSet(ranges: ranges + o.ranges) }

    public var complement: CodePointSet {
        var out: [ClosedRange<UInt32>] = []
        var next: UInt32 = 0
        for r in ranges {
            if r.lowerBound > next { out.append(next...(r.lowerBound - 1)) }
            next = r.upperBound + 1
        }
        if next <= Self.maxScalar { out.append(next...Self.maxScalar) }
        return CodePointSet(ranges: out)
    }

    public func subtracting(_ scalars: [UInt32]) -> CodePointSet {
        var keep = self.complement.ranges
        keep += scalars.map { $0...$0 }
        return CodePointSet(ranges: keep).complement
    }
}

/// A JSON number's constraints. Exponents are never produced; the digits are bounded so a
/// number always ends (15 before the point, 12 after).
public struct NumberSpec: Sendable, Hashable {
    public var integer: Bool
    public var minimum: Double?
    public var maximum: Double?
    public var exclusiveMinimum = false
    public var exclusiveMaximum = false

    public static let maxIntDigits = 15
    public static let maxFracDigits = 12

    public init(integer: Bool, minimum: Double? = nil, maximum: Double? = nil, exclusiveMinimum: Bool = false, exclusiveMaximum: Bool = false) {
        self.integer = integer
        self.minimum = minimum
        self.maximum = maximum
        self.exclusiveMinimum = exclusiveMinimum
        self.exclusiveMaximum = exclusiveMaximum
        if integer {
            // Integer bounds become inclusive integers.
            if let m = minimum { self.minimum = exclusiveMinimum ? (m.rounded(.down) + 1) : m.rounded(.up); self.exclusiveMinimum = false }
            if let m = maximum { self.maximum = exclusiveMaximum ? (m.rounded(.up) - 1) : m.rounded(.down); self.exclusiveMaximum = false }
        }
    }

    /// Whether a value in a...b (a ≤ b) satisfies the bounds.
    func meets(_ a: Double, _ b: Double) -> Bool {
        if let hi = maximum, exclusiveMaximum ? a >= hi : a > hi { return false }
        if let lo = minimum, exclusiveMinimum ? b <= lo : b < lo { return false }
        return true
    }

    /// Whether any number this spec allows exists (within the digit limits).
    public var isSatisfiable: Bool {
        let limit = 1e15 - 1
        guard meets(-limit, limit) else { return false }
        if let lo = minimum, let hi = maximum {
            if lo > hi || (lo == hi && (exclusiveMinimum || exclusiveMaximum)) { return false }
        }
        return true
    }
}

/// A compiled grammar: nodes and the start.
public final class Grammar: Sendable {
    public let nodes: [GrammarNode]
    public let root: Int

    public init(nodes: [GrammarNode], root: Int) {
        self.nodes = nodes
        self.root = root
    }

    /// The same language after up to four spaces or newlines (what a reasoning model writes
    /// between the end of its reasoning and its answer).
    public func allowingLeadingWhitespace() -> Grammar {
        var n = nodes
        n.append(.byteSet(ByteSet(" \n")))
        n.append(.rep(n.count - 1, min: 0, max: 4))
        n.append(.seq([n.count - 1, root]))
        return Grammar(nodes: n, root: n.count - 1)
    }
}

/// Builds a node graph; `placeholder` and `define` make cycles.
public struct GrammarBuilder {
    public private(set) var nodes: [GrammarNode] = []
    /// Refused beyond this many nodes: a grammar's size bounds the work of every step.
    public var limit = 200_000

    public struct TooLarge: Error, CustomStringConvertible {
        public var description: String { "the grammar is too large to compile (over its node limit)" }
    }

    public init() {}

    public mutating func add(_ n: GrammarNode) throws -> Int {
        guard nodes.count < limit else { throw TooLarge() }
        // A literal of no bytes is the empty sequence (a leaf must read something).
        if case .literal(let bytes) = n, bytes.isEmpty { nodes.append(.seq([])) } else { nodes.append(n) }
        return nodes.count - 1
    }

    /// A node to be defined later (for recursion).
    public mutating func placeholder() throws -> Int { try add(.alt([])) }

    public mutating func define(_ id: Int, as target: Int) { nodes[id] = .alt([target]) }

    public mutating func literal(_ s: String) throws -> Int { try add(.literal(Array(s.utf8))) }

    public mutating func seq(_ parts: [Int]) throws -> Int { parts.count == 1 ? parts[0] : try add(.seq(parts)) }

    public mutating func alt(_ parts: [Int]) throws -> Int { parts.count == 1 ? parts[0] : try add(.alt(parts)) }

    public mutating func empty() throws -> Int { try add(.seq([])) }

    public func build(root: Int) -> Grammar { Grammar(nodes: nodes, root: root) }
}
