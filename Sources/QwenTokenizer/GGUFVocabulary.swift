/// The tokenizer as GGUF stores it (llama.cpp's `tokenizer.ggml.*` arrays): what
/// `Tokenizer.load(gguf:)` reads back into the same tokenizer.
public struct GGUFVocabulary {
    /// Token strings by id: byte-level strings (`Ġthe`), added tokens' text, `[PADn]` for ids
    /// the tokenizer does not use (the embedding has rows past the vocabulary).
    public let tokens: [String]
    /// llama.cpp's token types: 1 normal, 3 control (special added), 4 user-defined (other
    /// added), 5 unused.
    public let types: [Int32]
    /// Merges in rank order, "left right".
    public let merges: [String]
}

extension Tokenizer {
    /// The vocabulary padded to `size` ids (the embedding's rows, which llama.cpp requires the
    /// token list to match); nil when the tokenizer has ids at or past `size`.
    public func ggufVocabulary(size: Int) -> GGUFVocabulary? {
        guard size >= vocabularySize else { return nil }
        var tokens = (0..<size).map { "[PAD\($0)]" }
        var types = [Int32](repeating: 5, count: size)
        for (s, id) in vocab {
            tokens[Int(id)] = s
            types[Int(id)] = 1
        }
        for a in addedTokens {
            tokens[Int(a.id)] = a.content
            types[Int(a.id)] = a.special ? 3 : 4
        }
        // merges maps id pairs to ranks; a pair's strings are the vocabulary's.
        var byId = [String](repeating: "", count: size)
        for (s, id) in vocab { byId[Int(id)] = s }
        let ranked = merges.sorted { $0.value.rank < $1.value.rank }
        let lines = ranked.map { key, _ in byId[Int(key >> 32)] + " " + byId[Int(key & 0xFFFF_FFFF)] }
        return GGUFVocabulary(tokens: tokens, types: types, merges: lines)
    }
}
