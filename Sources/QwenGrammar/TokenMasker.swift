import Foundation

/// A tokenizer's vocabulary arranged for masking: every token's bytes in a trie, so one walk
/// from a grammar state visits each shared prefix once and abandons a whole subtree at the
/// first byte the grammar refuses.
///
/// Plain-text tokens (whole UTF-8 characters, none of them `"`, `\` or a control character)
/// are also kept apart: inside a free JSON string every one of them is allowed (up to the
/// string's remaining length), so that case walks only the small trie of the others.
public final class TokenVocabulary: @unchecked Sendable {
    /// Logit rows (may exceed the tokenizer's ids: the rest are never allowed).
    public let size: Int
    /// Ids that end a sequence; allowed exactly when the grammar can finish.
    public let endIds: [Int32]
    let all: ByteTrie
    let nonPlain: ByteTrie
    /// Plain tokens sorted by character count.
    let plainByLength: [Int32]
    let plainLengths: [UInt16]
    let plainMask: [UInt64]

    /// - tokens: each id's bytes; `excluded`: ids never generated under a constraint (special
    ///   tokens); `endIds`: the end-of-sequence ids; `size`: the model's logit rows.
    public init(tokens: [[UInt8]], excluded: Set<Int32>, endIds: Set<Int32>, size: Int) {
        self.size = max(size, tokens.count)
        self.endIds = endIds.sorted()
        var usable: [(Int32, [UInt8])] = []
        var plain = [UInt16](repeating: 0, count: self.size)
        var nonPlainTokens: [(Int32, [UInt8])] = []
        for (id, bytes) in tokens.enumerated() where !bytes.isEmpty && !excluded.contains(Int32(id)) && !endIds.contains(Int32(id)) {
            usable.append((Int32(id), bytes))
            if let n = Self.plainCharacters(bytes) { plain[id] = UInt16(min(n, Int(UInt16.max))) } else { nonPlainTokens.append((Int32(id), bytes)) }
        }
        all = ByteTrie(usable)
        nonPlain = ByteTrie(nonPlainTokens)
        let sorted = plain.indices.filter { plain[$0] > 0 }.sorted { plain[$0] < plain[$1] }
        plainByLength = sorted.map { Int32($0) }
        plainLengths = sorted.map { plain[$0] }
        var m = [UInt64](repeating: 0, count: (self.size + 63) / 64)
        for id in sorted { m[id >> 6] |= 1 << UInt64(id & 63) }
        plainMask = m
    }

    /// The characters of a token that is plain JSON-string text, or nil.
    static func plainCharacters(_ bytes: [UInt8]) -> Int? {
        var n = 0, i = 0
        while i < bytes.count {
            let b = bytes[i]
            let len: Int
            switch b {
            case 0x20..<0x80:
                if b == 0x22 || b == 0x5C { return nil }
                len = 1
            case 0xC2...0xDF: len = 2
            case 0xE0...0xEF: len = 3
            case 0xF0...0xF4: len = 4
            default: return nil
            }
            guard i + len <= bytes.count else { return nil }
            if len > 1 {
                // Decode to reject overlong forms and surrogates.
                var cp = UInt32(b) & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07)
                for k in 1..<len {
                    guard bytes[i + k] & 0xC0 == 0x80 else { return nil }
                    cp = cp << 6 | UInt32(bytes[i + k] & 0x3F)
                }
                let minimum: UInt32 = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000
                guard cp >= minimum, cp <= 0x10FFFF, !(0xD800...0xDFFF).contains(cp) else { return nil }
            }
            i += len
            n += 1
        }
        return n
    }
}

/// Tokens in a trie of their bytes (flat arrays; node 0 is the root).
struct ByteTrie {
    var edgeStart: [Int32] = []
    var edgeCount: [Int32] = []
    var edgeByte: [UInt8] = []
    var edgeChild: [Int32] = []
    var tokenStart: [Int32] = []
    var tokenCount: [Int32] = []
    var tokenIds: [Int32] = []

    init(_ tokens: [(Int32, [UInt8])]) {
        // Sorted by bytes, each node's children come out in order and contiguous.
        let sorted = tokens.sorted { $0.1.lexicographicallyPrecedes($1.1) }
        var children: [[(UInt8, Int32)]] = [[]]
        var ends: [[Int32]] = [[]]
        for (id, bytes) in sorted {
            var node = 0
            for b in bytes {
                if let last = children[node].last, last.0 == b {
                    node = Int(last.1)
                } else {
                    children.append([])
                    ends.append([])
                    children[node].append((b, Int32(children.count - 1)))
                    node = children.count - 1
                }
            }
            ends[node].append(id)
        }
        for n in children.indices {
            edgeStart.append(Int32(edgeByte.count))
            edgeCount.append(Int32(children[n].count))
            for (b, c) in children[n] { edgeByte.append(b); edgeChild.append(c) }
            tokenStart.append(Int32(tokenIds.count))
            tokenCount.append(Int32(ends[n].count))
            tokenIds += ends[n]
        }
    }
}

/// Which tokens may come next: a bit per logit row, and whether the sequence may end.
public struct TokenMask: Sendable {
    public var bits: [UInt64]
    public var allowEnd: Bool

    public func allows(_ id: Int32) -> Bool { Int(id) < bits.count * 64 && bits[Int(id) >> 6] >> UInt64(id & 63) & 1 == 1 }

    public var allowedCount: Int { bits.reduce(0) { $0 + $1.nonzeroBitCount } }
}

/// A grammar bound to a vocabulary: masks per state, cached (states recur — every request
/// with the same schema walks the same ones).
public final class TokenConstraint: @unchecked Sendable {
    public let matcher: Matcher
    public let vocabulary: TokenVocabulary
    private let lock = NSLock()
    private var cache: [Matcher.State: TokenMask] = [:]
    /// Masks kept per constraint (19 KB each on a 152k vocabulary): with the server's 32 cached
    /// constraints, at most ~80 MB whatever clients send.
    public static let cacheLimit = 128

    public init(grammar: Grammar, vocabulary: TokenVocabulary) {
        matcher = Matcher(grammar)
        self.vocabulary = vocabulary
    }

    public func mask(_ s: Matcher.State) -> TokenMask {
        lock.lock()
        if let m = cache[s] { lock.unlock(); return m }
        lock.unlock()
        let m = computeMask(s)
        lock.lock()
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[s] = m
        lock.unlock()
        return m
    }

    /// The mask without the cache: a walk of the trie from `s`.
    public func computeMask(_ s: Matcher.State) -> TokenMask {
        let v = vocabulary
        var bits = [UInt64](repeating: 0, count: (v.size + 63) / 64)
        if s.canContinue {
            if let room = matcher.freeRunRoom(s) {
                // Inside a free string: every plain token that fits, then the others by walking.
                if room >= Int(v.plainLengths.last ?? 0) {
                    bits = v.plainMask
                } else {
                    for (k, id) in v.plainByLength.enumerated() {
                        if Int(v.plainLengths[k]) > room { break }
                        bits[Int(id) >> 6] |= 1 << UInt64(id & 63)
                    }
                }
                walk(v.nonPlain, 0, s, &bits)
            } else {
                walk(v.all, 0, s, &bits)
            }
        }
        return TokenMask(bits: bits, allowEnd: s.canFinish)
    }

    private func walk(_ trie: ByteTrie, _ node: Int, _ s: Matcher.State, _ bits: inout [UInt64]) {
        let start = Int(trie.edgeStart[node]), count = Int(trie.edgeCount[node])
        for e in start..<(start + count) {
            let next = matcher.advance(s, trie.edgeByte[e])
            if next.isDead { continue }
            let child = Int(trie.edgeChild[e])
            let ts = Int(trie.tokenStart[child])
            for k in ts..<(ts + Int(trie.tokenCount[child])) {
                let id = trie.tokenIds[k]
                bits[Int(id) >> 6] |= 1 << UInt64(id & 63)
            }
            if trie.edgeCount[child] > 0 && next.canContinue { walk(trie, child, next, &bits) }
        }
    }

    /// The state after `bytes`, or nil when the grammar refuses them.
    public func advance(_ s: Matcher.State, bytes: [UInt8]) -> Matcher.State? {
        let n = matcher.advance(s, bytes: bytes)
        return n.isDead ? nil : n
    }
}
