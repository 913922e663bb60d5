/// Turns a stream of token ids into text pieces that never split a UTF-8 character:
/// bytes of an unfinished character wait for the next token; bytes that can never
/// become a character are emitted as U+FFFD once that is certain.
public struct StreamingDecoder {
    let tokenizer: Tokenizer
    let skipSpecial: Bool
    private var pending: [UInt8] = []

    public init(tokenizer: Tokenizer, skipSpecial: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
    }

    /// The text that `id` completes (possibly empty).
    public mutating func push(_ id: Int32) -> String {
        pending.append(contentsOf: tokenizer.bytes([id], skipSpecial: skipSpecial))
        let keep = Self.incompleteTail(pending)
        let ready = pending[..<(pending.count - keep)]
        let text = String(decoding: ready, as: UTF8.self)
        pending.removeFirst(pending.count - keep)
        return text
    }

    /// Whatever is still held back, decoded as it is (at the end of a stream).
    public mutating func flush() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }

    /// How many bytes at the end of `b` are the start of a character that more bytes could finish.
    static func incompleteTail(_ b: [UInt8]) -> Int {
        let n = b.count
        var k = 1
        while k <= min(3, n) {
            let c = b[n - k]
            if c & 0xC0 == 0x80 { k += 1; continue }  // continuation byte: look further back
            let need: Int
            switch c {
            case 0xC2...0xDF: need = 2
            case 0xE0...0xEF: need = 3
            case 0xF0...0xF4: need = 4
            default: return 0
            }
            return need > k ? k : 0
        }
        return 0
    }
}
