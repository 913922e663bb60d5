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

    // MARK: Encoding

    /// Token ids for `text`. Added tokens written in the text are recognised as such
    /// (as Hugging Face tokenizers do by default) unless `parseSpecial` is false.
    public func encode(_ text: String, parseSpecial: Bool = true) -> [Int32] {
        var out: [Int32] = []
        let utf8 = Array(text.utf8)
        var segmentStart = 0
        var i = 0
        if parseSpecial && !addedByFirstByte.isEmpty {
            while i < utf8.count {
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
            let ids = bpe(Array(pieceText.utf8))
            cacheLock.lock()
            if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
            cache[pieceText] = ids
            cacheLock.unlock()
            out.append(contentsOf: ids)
        }
    }

    /// Merges the byte tokens of one piece, lowest rank first, leftmost among equals.
    func bpe(_ bytes: [UInt8]) -> [Int32] {
        var syms = bytes.map { byteIds[Int($0)] }
        if syms.count < 2 { return syms }
        while true {
            var best = Int32.max, at = -1, mergedId: Int32 = 0
            for p in 0..<(syms.count - 1) {
                let key = UInt64(UInt32(syms[p])) << 32 | UInt64(UInt32(syms[p + 1]))
                if let m = merges[key], m.rank < best {
                    best = m.rank
                    at = p
                    mergedId = m.id
                }
            }
            if at < 0 { return syms }
            syms[at] = mergedId
            syms.remove(at: at + 1)
        }
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
