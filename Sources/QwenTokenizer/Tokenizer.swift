import Foundation

/// Qwen's byte-level BPE tokenizer: added tokens are cut out first, the rest is NFC
/// normalised, split by `QwenPreTokenizer`, mapped to bytes and merged by rank.
public final class Tokenizer: @unchecked Sendable {
    public struct AddedToken: Sendable {
        public let id: Int32
        public let content: String
        public let special: Bool
    }

    /// Token id → the bytes it stands for (added tokens: their UTF-8 text).
    public let tokenBytes: [[UInt8]]
    public let addedTokens: [AddedToken]
    public let eosTokenIds: Set<Int32>
    public let bosTokenId: Int32?
    public let padTokenId: Int32?
    public let chatTemplate: String?
    let vocab: [String: Int32]
    /// (left id << 32 | right id) → (rank, merged id).
    let merges: [UInt64: (rank: Int32, id: Int32)]
    let byteIds: [Int32]
    let specialIds: Set<Int32>
    private let addedByFirstByte: [UInt8: [AddedToken]]
    private var cache: [String: [Int32]] = [:]
    private let cacheLock = NSLock()

    public var vocabularySize: Int { tokenBytes.count }

    struct TokenizerError: Error, CustomStringConvertible { let description: String }

    /// - vocab: byte-level token strings to ids; merges: pairs of token strings in rank order.
    init(origin: String, vocab: [String: Int32], merges mergePairs: [(String, String)], added: [AddedToken],
         eos: Set<Int32>, bos: Int32?, pad: Int32?, chatTemplate: String?) throws {
        self.vocab = vocab
        var size = 0
        for (_, id) in vocab { size = max(size, Int(id) + 1) }
        for a in added { size = max(size, Int(a.id) + 1) }
        var bytes = [[UInt8]](repeating: [], count: size)
        for (tok, id) in vocab {
            guard id >= 0 else { throw TokenizerError(description: "\(origin): negative token id for \(tok)") }
            bytes[Int(id)] = ByteLevel.bytes(of: tok) ?? Array(tok.utf8)
        }
        for a in added { bytes[Int(a.id)] = Array(a.content.utf8) }
        tokenBytes = bytes
        addedTokens = added
        var byteIds = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            guard let id = vocab[String(Character(ByteLevel.byteToScalar[b]))] else {
                throw TokenizerError(description: "\(origin): the vocabulary lacks the byte-level token for byte \(b)")
            }
            byteIds[b] = id
        }
        self.byteIds = byteIds
        var m: [UInt64: (Int32, Int32)] = [:]
        m.reserveCapacity(mergePairs.count)
        for (rank, (a, b)) in mergePairs.enumerated() {
            guard let l = vocab[a], let r = vocab[b], let merged = vocab[a + b] else {
                throw TokenizerError(description: "\(origin): merge \(rank) (\"\(a) \(b)\") names tokens missing from the vocabulary")
            }
            let key = UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))
            if m[key] == nil { m[key] = (Int32(rank), merged) }
        }
        merges = m
        var byFirst: [UInt8: [AddedToken]] = [:]
        for a in added where !a.content.isEmpty {
            byFirst[a.content.utf8.first!, default: []].append(a)
        }
        for k in byFirst.keys { byFirst[k]!.sort { $0.content.utf8.count > $1.content.utf8.count } }
        addedByFirstByte = byFirst
        specialIds = Set(added.filter(\.special).map(\.id))
        eosTokenIds = eos
        bosTokenId = bos
        padTokenId = pad
        self.chatTemplate = chatTemplate
    }

    public func id(of token: String) -> Int32? {
        if let a = addedTokens.first(where: { $0.content == token }) { return a.id }
        return vocab[token]
    }

    public func isSpecial(_ id: Int32) -> Bool { specialIds.contains(id) }

    /// The token of one byte, and the merge of two tokens (its rank and result): what
    /// `mergePiece` is built from, open for checking.
    public func byteToken(_ b: UInt8) -> Int32 { byteIds[Int(b)] }
    @inline(__always)
    public func merge(_ left: Int32, _ right: Int32) -> (rank: Int32, id: Int32)? { merges[UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))] }

    // MARK: Encoding

    /// Token ids for `text`. Added tokens written in the text are recognised as such
    /// (as Hugging Face tokenizers do by default) unless `parseSpecial` is false.
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int32] {
        encode(text, literal: parseSpecial ? [] : [0..<text.utf8.count])
    }

    /// Token ids for `text`, where added tokens are recognised except those starting inside
    /// one of the `literal` UTF-8 byte ranges (sorted, not overlapping): text there is
    /// plain text even when it spells a control token (user content in a chat prompt).
    public func encode(_ text: String, literal: [Range<Int>]) -> [Int32] {
        var out: [Int32] = []
        let utf8 = Array(text.utf8)
        var segmentStart = 0
        var i = 0
        var nextLiteral = 0
        if !addedByFirstByte.isEmpty {
            while i < utf8.count {
                while nextLiteral < literal.count && literal[nextLiteral].upperBound <= i { nextLiteral += 1 }
                if nextLiteral < literal.count && literal[nextLiteral].contains(i) {
                    i = literal[nextLiteral].upperBound
                    continue
                }
                if let candidates = addedByFirstByte[utf8[i]],
                   let hit = candidates.first(where: { matches(utf8, at: i, $0.content) }) {
                    encodeOrdinary(utf8[segmentStart..<i], into: &out)
                    out.append(hit.id)
                    i += hit.content.utf8.count
                    segmentStart = i
                } else {
                    i += 1
                }
            }
        }
        encodeOrdinary(utf8[segmentStart..<utf8.count], into: &out)
        return out
    }

    private func matches(_ bytes: [UInt8], at i: Int, _ s: String) -> Bool {
        var j = i
        for b in s.utf8 {
            guard j < bytes.count, bytes[j] == b else { return false }
            j += 1
        }
        return true
    }

    private func encodeOrdinary(_ bytes: ArraySlice<UInt8>, into out: inout [Int32]) {
        guard !bytes.isEmpty else { return }
        let text = String(decoding: bytes, as: UTF8.self).precomposedStringWithCanonicalMapping
        let scalars = Array(text.unicodeScalars)
        for piece in QwenPreTokenizer.split(scalars) {
            var s = String.UnicodeScalarView()
            s.append(contentsOf: scalars[piece])
            let pieceText = String(s)
            cacheLock.lock()
            let cached = cache[pieceText]
            cacheLock.unlock()
            if let cached {
                out.append(contentsOf: cached)
                continue
            }
            let ids = mergePiece(Array(pieceText.utf8))
            // Long pieces (a run of one letter, say) are rare and not worth their memory.
            guard pieceText.utf8.count <= 256 else {
                out.append(contentsOf: ids)
                continue
            }
            cacheLock.lock()
            if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
            cache[pieceText] = ids
            cacheLock.unlock()
            out.append(contentsOf: ids)
        }
    }

    /// Merges the byte tokens of one piece, lowest rank first, leftmost among equals.
    /// A heap of candidate pairs over a linked list of symbols: O(n log n) in the piece's
    /// length (rescanning every pair after each merge is quadratic, and one long run of a
    /// repeated letter is a single piece).
    public func mergePiece(_ bytes: [UInt8]) -> [Int32] {
        var syms = bytes.map { byteIds[Int($0)] }
        let n = syms.count
        if n < 2 { return syms }
        var next = Array(1...n)  // n: none
        var prev = Array(-1..<(n - 1))
        var alive = [Bool](repeating: true, count: n)
        var heap = PairHeap()
        func consider(_ left: Int) {
            let right = next[left]
            guard left >= 0, right < n else { return }
            if let m = merge(syms[left], syms[right]) {
                heap.push(.init(rank: m.rank, left: Int32(left), leftId: syms[left], rightId: syms[right]))
            }
        }
        for i in 0..<(n - 1) { consider(i) }
        while let c = heap.pop() {
            let left = Int(c.left)
            guard alive[left], syms[left] == c.leftId else { continue }
            let right = next[left]
            guard right < n, syms[right] == c.rightId, let m = merge(c.leftId, c.rightId) else {
                continue
            }
            syms[left] = m.id
            alive[right] = false
            next[left] = next[right]
            if next[right] < n { prev[next[right]] = left }
            if prev[left] >= 0 { consider(prev[left]) }
            consider(left)
        }
        var out: [Int32] = []
        out.reserveCapacity(n)
        var i = 0
        while i < n {
            out.append(syms[i])
            i = next[i]
        }
        return out
    }

    // MARK: Decoding

    /// The bytes of `ids` (special tokens left out when `skipSpecial`).
    public func bytes(_ ids: [Int32], skipSpecial: Bool = false) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids where id >= 0 && Int(id) < tokenBytes.count {
            if skipSpecial && specialIds.contains(id) { continue }
            out.append(contentsOf: tokenBytes[Int(id)])
        }
        return out
    }

    /// Text for `ids`; invalid UTF-8 becomes U+FFFD, as in Hugging Face's decoder.
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) -> String {
        String(decoding: bytes(ids, skipSpecial: skipSpecial), as: UTF8.self)
    }
}

/// A binary min-heap of merge candidates ordered by (rank, position of the left symbol).
struct PairHeap {
    struct Candidate {
        let rank: Int32
        let left: Int32
        let leftId: Int32
        let rightId: Int32
        func precedes(_ o: Candidate) -> Bool { rank != o.rank ? rank < o.rank : left < o.left }
    }

    private var items: [Candidate] = []

    mutating func push(_ c: Candidate) {
        items.append(c)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].precedes(items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Candidate? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && items[l].precedes(items[m]) { m = l }
                if r < items.count && items[r].precedes(items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}
