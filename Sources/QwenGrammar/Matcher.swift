/// Runs a `Grammar` over bytes, one byte at a time.
///
/// A state is the set of live *threads*; a thread is a stack of frames from the root down to
/// a leaf that is ready to read the next byte (an empty stack has matched the whole grammar).
/// Alternatives split a thread; a byte advances every thread and keeps those that take it.
/// The invariant that makes masks safe: every thread in a state can still reach the end, so
/// any byte some thread takes leads somewhere (dead ends are cut when they appear — a
/// character class with no member in a UTF-8 prefix's range, a number bound no digit can
/// meet, a string already at its maximum length).
public struct Matcher: Sendable {
    public let grammar: Grammar
    let nodes: [GrammarNode]
    /// Threads kept per state; beyond it the rest are dropped (the language narrows, every
    /// kept thread stays valid). JSON Schemas rarely hold more than a handful.
    public static let maxThreads = 64
    /// Frames per thread: nesting deeper than this is not generated (the output can always
    /// close what it opened instead), which also bounds the recursion of a step.
    public static let maxStack = 768
    /// Stacks explored per byte (see Collector.budget).
    public static let maxExpansions = 4096

    public init(_ g: Grammar) {
        grammar = g
        nodes = g.nodes
    }

    struct Frame: Hashable, Sendable {
        var node: Int32
        var pos: Int32 = 0
        var a: Int64 = 0
        var b: Int64 = 0
        init(_ node: Int) { self.node = Int32(node) }
    }

    public struct State: Hashable, Sendable {
        var threads: [[Frame]]
        /// Nothing can follow: the bytes so far are not a prefix of the language.
        public var isDead: Bool { threads.isEmpty }
        /// The bytes so far are a whole sentence of the language.
        public var canFinish: Bool { threads.contains { $0.isEmpty } }
        public var threadCount: Int { threads.count }
        /// Some thread can read another byte.
        public var canContinue: Bool { threads.contains { !$0.isEmpty } }
    }

    public var start: State {
        var out = Collector()
        expand([Frame(grammar.root)], &out)
        return State(threads: out.threads)
    }

    public func advance(_ s: State, _ byte: UInt8) -> State {
        var out = Collector()
        for t in s.threads where !t.isEmpty {
            step(t, byte, &out)
            if out.threads.count >= Self.maxThreads { break }
        }
        return State(threads: out.threads)
    }

    public func advance(_ s: State, bytes: some Sequence<UInt8>) -> State {
        var s = s
        for b in bytes {
            s = advance(s, b)
            if s.isDead { break }
        }
        return s
    }

    /// Whether the whole of `bytes` is a sentence.
    public func matches(_ bytes: some Sequence<UInt8>) -> Bool { advance(start, bytes: bytes).canFinish }

    /// The threads a step produces, and every stack it passed through (so epsilon loops end):
    /// a short list compared directly, a hash set only when it grows.
    struct Collector {
        var threads: [[Frame]] = []
        var list: [[Frame]] = []
        var set: Set<[Frame]>?
        /// Expansions left this step: bounds a step's work (and recursion) whatever the grammar;
        /// what is not reached is not generated, and a mask never offers it.
        var budget = Matcher.maxExpansions

        mutating func insert(_ t: [Frame]) -> Bool {
            if set != nil { return set!.insert(t).inserted }
            for u in list where u == t { return false }
            list.append(t)
            if list.count > 24 { set = Set(list) }
            return true
        }
    }

    // MARK: Epsilon moves

    /// Adds `t` (its top frame at a node's entry, or a parent resuming) and everything it
    /// reaches without reading a byte.
    func expand(_ t: [Frame], _ out: inout Collector) {
        guard t.count <= Self.maxStack, out.budget > 0, out.insert(t) else { return }
        out.budget -= 1
        guard let top = t.last else { out.threads.append(t); return }
        switch nodes[Int(top.node)] {
        case .byteSet, .literal, .char, .rawChar, .number:
            out.threads.append(t)
        case .seq(let parts):
            if Int(top.pos) < parts.count {
                var u = t
                u.append(Frame(parts[Int(top.pos)]))
                expand(u, &out)
            } else {
                complete(t, &out)
            }
        case .alt(let parts):
            for p in parts {
                var u = t
                u[u.count - 1] = Frame(p)
                expand(u, &out)
            }
        case .rep(let child, let lo, let hi):
            if hi.map({ Int(top.pos) < $0 }) ?? true {
                var u = t
                u.append(Frame(child))
                expand(u, &out)
            }
            if Int(top.pos) >= lo { complete(t, &out) }
        case .counted(let child, _, _):
            var u = t
            u.append(Frame(child))
            expand(u, &out)
        }
    }

    /// The top frame's node has matched: pops it and resumes its parent.
    func complete(_ t: [Frame], _ out: inout Collector) {
        var t = t
        t.removeLast()
        guard var parent = t.last else { expand(t, &out); return }
        switch nodes[Int(parent.node)] {
        case .seq:
            parent.pos += 1
        case .rep(_, let lo, let hi):
            // Unbounded repeats count only up to their minimum, so states stay finite.
            parent.pos = Int32(min(Int(parent.pos) + 1, hi ?? lo))
        case .counted(_, let lo, _):
            guard parent.a >= lo else { return }
            complete(t, &out)
            return
        default:
            preconditionFailure("a leaf or alternative cannot be a parent")
        }
        t[t.count - 1] = parent
        expand(t, &out)
    }

    // MARK: Reading a byte

    func step(_ t: [Frame], _ byte: UInt8, _ out: inout Collector) {
        var t = t
        var f = t[t.count - 1]
        switch nodes[Int(f.node)] {
        case .byteSet(let set):
            if set.contains(byte) { complete(t, &out) }
        case .literal(let bytes):
            guard bytes[Int(f.pos)] == byte else { return }
            f.pos += 1
            t[t.count - 1] = f
            if Int(f.pos) == bytes.count { complete(t, &out) } else { expand(t, &out) }
        case .char(let set, _), .rawChar(let set):
            let raw: Bool
            if case .rawChar = nodes[Int(f.node)] { raw = true } else { raw = false }
            if f.pos == 0 {
                // A new character: the nearest enclosing count must have room.
                var i = t.count - 2
                while i >= 0 {
                    if case .counted(_, _, let hi) = nodes[Int(t[i].node)] {
                        if let hi, t[i].a >= hi { return }
                        t[i].a += 1
                        break
                    }
                    i -= 1
                }
            }
            switch Self.charStep(set, &f, byte, raw: raw) {
            case .dead: return
            case .more:
                t[t.count - 1] = f
                expand(t, &out)
            case .done:
                complete(t, &out)
            }
        case .number(let spec):
            guard Self.numberStep(spec, &f, byte) else { return }
            t[t.count - 1] = f
            expand(t, &out)
            if Self.numberCanEnd(spec, f) { complete(t, &out) }
        default:
            preconditionFailure("only leaves read bytes")
        }
    }

    enum CharResult { case dead, more, done }

    /// One byte of a JSON string character. Frame: pos 0 start, 1…3 UTF-8 bytes still to
    /// come (a: bits so far, b: the sequence's length), 10 after a backslash, 11…14 after `\u`
    /// and pos−11 hex digits (a: their value).
    /// `raw`: plain text, where every character is its UTF-8 bytes and nothing is escaped.
    static func charStep(_ set: CodePointSet, _ f: inout Frame, _ byte: UInt8, raw: Bool = false) -> CharResult {
        func rangeOK(_ bits: Int64, _ remaining: Int, _ length: Int64) -> Bool {
            let lo = bits << (6 * remaining), hi = lo | ((1 << (6 * remaining)) - 1)
            let (vlo, vhi): (Int64, Int64) = length == 2 ? (0x80, 0x7FF) : length == 3 ? (0x800, 0xFFFF) : (0x10000, 0x10FFFF)
            let a = max(lo, vlo), b = min(hi, vhi)
            return a <= b && set.intersects(UInt32(a), UInt32(b))
        }
        switch f.pos {
        case 0:
            if raw, byte < 0x80 { return set.contains(UInt32(byte)) ? .done : .dead }
            switch byte {
            case UInt8(ascii: "\\"):
                f.pos = 10
                return escapeTargets.contains { set.contains($0) } || set.intersects(0, 0xFFFF) ? .more : .dead
            case UInt8(ascii: "\""), 0..<0x20: return .dead
            case 0x20..<0x80: return set.contains(UInt32(byte)) ? .done : .dead
            case 0xC2...0xDF: f.a = Int64(byte & 0x1F); f.b = 2; f.pos = 1
            case 0xE0...0xEF: f.a = Int64(byte & 0x0F); f.b = 3; f.pos = 2
            case 0xF0...0xF4: f.a = Int64(byte & 0x07); f.b = 4; f.pos = 3
            default: return .dead
            }
            return rangeOK(f.a, Int(f.pos), f.b) ? .more : .dead
        case 1...3:
            guard byte & 0xC0 == 0x80 else { return .dead }
            f.a = f.a << 6 | Int64(byte & 0x3F)
            f.pos -= 1
            if f.pos == 0 {
                return rangeOK(f.a, 0, f.b) && set.contains(UInt32(f.a)) ? .done : .dead
            }
            return rangeOK(f.a, Int(f.pos), f.b) ? .more : .dead
        case 10:
            let cp: UInt32
            switch byte {
            case UInt8(ascii: "\""): cp = 0x22
            case UInt8(ascii: "\\"): cp = 0x5C
            case UInt8(ascii: "/"): cp = 0x2F
            case UInt8(ascii: "b"): cp = 0x08
            case UInt8(ascii: "f"): cp = 0x0C
            case UInt8(ascii: "n"): cp = 0x0A
            case UInt8(ascii: "r"): cp = 0x0D
            case UInt8(ascii: "t"): cp = 0x09
            case UInt8(ascii: "u"):
                f.pos = 11
                f.a = 0
                return set.intersects(0, 0xFFFF) ? .more : .dead
            default: return .dead
            }
            return set.contains(cp) ? .done : .dead
        default:
            guard let h = hexValue(byte) else { return .dead }
            f.a = f.a << 4 | Int64(h)
            f.pos += 1
            let left = 15 - Int(f.pos)
            if left == 0 { return set.contains(UInt32(f.a)) ? .done : .dead }
            let lo = f.a << (4 * left), hi = lo | ((1 << (4 * left)) - 1)
            return set.intersects(UInt32(lo), UInt32(hi)) ? .more : .dead
        }
    }

    static let escapeTargets: [UInt32] = [0x22, 0x5C, 0x2F, 0x08, 0x0C, 0x0A, 0x0D, 0x09]

    static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    // Number frame: pos = phase (0 start, 1 after '-', 2 integer digits, 3 a lone leading
    // zero, 4 after '.', 5 fraction digits) | negative << 3 | integer digits << 4 |
    // fraction digits << 9; a = the integer part, b = the fraction digits' value.

    static func numberStep(_ spec: NumberSpec, _ f: inout Frame, _ byte: UInt8) -> Bool {
        var phase = Int(f.pos & 7), neg = f.pos >> 3 & 1 == 1, id = Int(f.pos >> 4 & 31), fd = Int(f.pos >> 9 & 31)
        let digit = byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") ? Int64(byte - UInt8(ascii: "0")) : nil
        switch (phase, byte) {
        case (0, UInt8(ascii: "-")): phase = 1; neg = true
        case (0, _), (1, _):
            guard let d = digit else { return false }
            phase = d == 0 ? 3 : 2
            f.a = d
            id = 1
        case (2, UInt8(ascii: ".")), (3, UInt8(ascii: ".")):
            guard !spec.integer else { return false }
            phase = 4
        case (2, _):
            guard let d = digit, id < NumberSpec.maxIntDigits else { return false }
            f.a = f.a * 10 + d
            id += 1
        case (4, _), (5, _):
            guard let d = digit, fd < NumberSpec.maxFracDigits else { return false }
            f.b = f.b * 10 + d
            fd += 1
            phase = 5
        default:
            return false
        }
        f.pos = Int32(phase | (neg ? 8 : 0) | id << 4 | fd << 9)
        return numberFeasible(spec, f)
    }

    /// The values the number's completions can take, as (low, high) absolute ranges.
    static func numberFeasible(_ spec: NumberSpec, _ f: Frame) -> Bool {
        let phase = Int(f.pos & 7), neg = f.pos >> 3 & 1 == 1, id = Int(f.pos >> 4 & 31), fd = Int(f.pos >> 9 & 31)
        let eps = spec.integer ? 1.0 : 1e-12
        func ok(_ lo: Double, _ hi: Double) -> Bool { neg ? spec.meets(-hi, -lo) : spec.meets(lo, hi) }
        let v = Double(f.a)
        switch phase {
        case 1: return ok(0, 1e15 - 1)
        case 2:
            var scale = 1.0
            for _ in 0...(NumberSpec.maxIntDigits - id) {
                if ok(v * scale, (v + 1) * scale - eps) { return true }
                scale *= 10
            }
            return false
        case 3: return ok(0, spec.integer ? 0 : 1 - eps)
        case 4: return ok(v, v + 1 - eps)
        case 5:
            let unit = pow10(fd)
            let x = v + Double(f.b) / unit
            return fd == NumberSpec.maxFracDigits ? ok(x, x) : ok(x, x + 1 / unit - 1e-12)
        default: return true
        }
    }

    static func numberCanEnd(_ spec: NumberSpec, _ f: Frame) -> Bool {
        let phase = Int(f.pos & 7), neg = f.pos >> 3 & 1 == 1, fd = Int(f.pos >> 9 & 31)
        guard phase == 2 || phase == 3 || phase == 5 else { return false }
        var x = Double(f.a) + (phase == 5 ? Double(f.b) / pow10(fd) : 0)
        if neg { x = -x }
        return spec.meets(x, x)
    }

    static func pow10(_ n: Int) -> Double {
        var r = 1.0
        for _ in 0..<n { r *= 10 }
        return r
    }
}

extension Matcher {
    /// The bytes some thread of `s` can read next.
    public func nextBytes(_ s: State) -> [UInt8] {
        (0...255).map(UInt8.init).filter { !advance(s, $0).isDead }
    }

    /// A random sentence of the language: each step picks uniformly among the bytes the grammar
    /// allows, and stops with probability `stop` where the grammar may end. nil when it has
    /// not ended within `maxBytes` (a language whose random walks run long).
    public func randomSentence<R: RandomNumberGenerator>(using rng: inout R, stop: Double = 0.3, maxBytes: Int = 20_000) -> [UInt8]? {
        var s = start
        var out: [UInt8] = []
        while out.count < maxBytes {
            let options = nextBytes(s)
            if s.canFinish && (options.isEmpty || Double.random(in: 0..<1, using: &rng) < stop) { return out }
            guard let b = options.randomElement(using: &rng) else { return nil }
            out.append(b)
            s = advance(s, b)
        }
        return nil
    }
}

extension Matcher {
    /// When every thread is at the start of a free-run string character: the fewest further
    /// characters any of them may take (Int.max when unbounded); otherwise nil.
    /// Threads waiting for a byte no plain token has (the string's closing quote) are no
    /// obstacle: plain tokens cannot feed them, and the walk of the other tokens covers them.
    public func freeRunRoom(_ s: State) -> Int? {
        var room = Int.max
        var runs = 0
        for t in s.threads {
            guard let top = t.last else { return nil }
            if case .literal(let bytes) = nodes[Int(top.node)] {
                let next = bytes[Int(top.pos)]
                guard next == 0x22 || next == 0x5C || next < 0x20 else { return nil }
                continue
            }
            guard top.pos == 0, case .char(_, run: true) = nodes[Int(top.node)] else { return nil }
            runs += 1
            var i = t.count - 2
            while i >= 0 {
                if case .counted(_, _, let hi) = nodes[Int(t[i].node)] {
                    if let hi { room = min(room, hi - Int(t[i].a)) }
                    break
                }
                i -= 1
            }
        }
        return runs > 0 ? room : nil
    }
}
