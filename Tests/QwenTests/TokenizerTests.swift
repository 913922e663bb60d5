import Foundation
import QwenFormats
import QwenTokenizer
import XCTest

/// Token ids identical to Hugging Face tokenizers: the real Qwen vocabulary (from the
/// default model's GGUF) and a small tokenizer.json with Qwen's pipeline.
final class TokenizerTests: XCTestCase {
    static var qwen: Tokenizer?

    func realTokenizer() throws -> Tokenizer {
        if let t = Self.qwen { return t }
        let t = try Tokenizer.load(gguf: GGUFFile(path: try Fixtures.defaultModel()))
        Self.qwen = t
        return t
    }

    func compare(_ tok: Tokenizer, fixture: String) throws {
        let obj = try XCTUnwrap(try Fixtures.json(fixture) as? [String: Any])
        let texts = obj["texts"] as! [String]
        let ids = (obj["ids"] as! [Any]).map(ints32)
        XCTAssertGreaterThanOrEqual(texts.count, 2000)
        var failures = 0
        for (t, want) in zip(texts, ids) {
            let got = tok.encode(t)
            if got != want {
                failures += 1
                if failures <= 5 { XCTFail("\(fixture): \(t.debugDescription)\n got  \(got)\n want \(want)") }
            }
            // decode(encode(s)) == s, up to the NFC normalisation that encoding applies.
            XCTAssertEqual(tok.decode(got), t.precomposedStringWithCanonicalMapping, t.debugDescription)
        }
        XCTAssertEqual(failures, 0, "\(failures) of \(texts.count) strings tokenised differently")
    }

    func testRealQwenVocabularyMatchesHuggingFace() throws {
        try compare(try realTokenizer(), fixture: "expected/tokenizer_qwen.json")
    }

    func testTokenizerJSONMatchesHuggingFace() throws {
        try compare(try Tokenizer.load(directory: Fixtures.path("tokenizer")), fixture: "expected/tokenizer_tiny.json")
    }

    func testDecodeOfArbitraryIdsMatchesHuggingFace() throws {
        let tok = try realTokenizer()
        let obj = try XCTUnwrap(try Fixtures.json("expected/tokenizer_qwen.json") as? [String: Any])
        let idLists = (obj["decode_ids"] as! [Any]).map(ints32)
        let decoded = obj["decoded"] as! [String]
        for (ids, want) in zip(idLists, decoded) {
            XCTAssertEqual(tok.decode(ids), want, "\(ids)")
            // Streaming never emits a broken character, and adds up to the whole decode.
            var dec = StreamingDecoder(tokenizer: tok, skipSpecial: false)
            var text = ""
            for id in ids { text += dec.push(id) }
            text += dec.flush()
            XCTAssertEqual(text, want, "streamed \(ids)")
        }
    }

    func testStreamingHoldsBackPartialCharacters() throws {
        let tok = try realTokenizer()
        // "😀" is four bytes; Qwen spells it with byte-level tokens that split the character.
        let ids = tok.encode("a😀b")
        var dec = StreamingDecoder(tokenizer: tok)
        var pieces: [String] = []
        for id in ids { pieces.append(dec.push(id)) }
        pieces.append(dec.flush())
        XCTAssertEqual(pieces.joined(), "a😀b")
        XCTAssertFalse(pieces.contains { $0.contains("\u{FFFD}") }, "\(pieces)")
    }

    func testSpecialTokensAndChatTemplateFromGGUF() throws {
        let tok = try realTokenizer()
        XCTAssertEqual(tok.encode("<|im_start|>user"), [151644, 872])
        XCTAssertTrue(tok.eosTokenIds.contains(151645))
        XCTAssertTrue(tok.isSpecial(151644))
        XCTAssertEqual(tok.encode("<|im_start|>", parseSpecial: false).count > 1, true)
        XCTAssertEqual(tok.decode([151644, 872], skipSpecial: true), "user")
        XCTAssertTrue(tok.chatTemplate?.contains("<|im_start|>") ?? false)
    }

    func testTokenizerConfigGivesEOSAndTemplate() throws {
        let tok = try Tokenizer.load(directory: Fixtures.path("qwen3-tiny-f32"))
        XCTAssertEqual(tok.eosTokenIds, [tok.id(of: "<|im_end|>")!])
        XCTAssertNotNil(tok.chatTemplate)
    }
}
