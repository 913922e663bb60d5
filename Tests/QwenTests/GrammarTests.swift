import Foundation
import QwenChat
import QwenFormats
import QwenGrammar
import QwenRuntime
import QwenTokenizer
import XCTest

/// Constrained decoding's grammar engine: what schemas, regexes and tool calls accept and
/// refuse, that random sentences of every grammar are valid, and that token masks are exactly
/// the tokens whose bytes the grammar takes.
final class GrammarTests: XCTestCase {
    func schema(_ json: String) throws -> Matcher { Matcher(try SchemaCompiler.grammar(schema: try JSONValue.parse(json))) }

    func refusal(_ json: String) -> String? {
        do { _ = try SchemaCompiler.grammar(schema: try JSONValue.parse(json)); return nil } catch let r as SchemaCompiler.Refusal {
            return r.description
        } catch { return "\(error)" }
    }

    func testObjectsKeepOrderAndMayOmitOptionalProperties() throws {
        let m = try schema(#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"},"c":{"type":"boolean"}},"required":["a","c"]}"#)
        XCTAssertTrue(m.matches(Array(#"{"a": 1, "b": "x", "c": true}"#.utf8)))
        XCTAssertTrue(m.matches(Array(#"{"a":1,"c":false}"#.utf8)))
        XCTAssertTrue(m.matches(Array("{\n  \"a\": -3,\n  \"c\": true\n}".utf8)))
        XCTAssertFalse(m.matches(Array(#"{"a":1}"#.utf8)), "a required property is missing")
        XCTAssertFalse(m.matches(Array(#"{"c":true,"a":1}"#.utf8)), "properties come in the schema's order")
        XCTAssertFalse(m.matches(Array(#"{"a":1,"c":true,"d":1}"#.utf8)), "undeclared properties are not generated")
        XCTAssertFalse(m.matches(Array(#"{"a":1.5,"c":true}"#.utf8)), "an integer has no fraction")
        XCTAssertFalse(m.matches(Array(#"{"a":1,,"c":true}"#.utf8)))
        XCTAssertFalse(m.matches(Array("{\"a\":1,\"c\":true\n\n\n}".utf8)), "whitespace is bounded")
    }

    func testTypesEnumsConstAndUnions() throws {
        let m = try schema(#"{"anyOf":[{"type":"null"},{"enum":["red","green",3]},{"type":["boolean","array"],"items":{"const":{"k":[1,2]}}}]}"#)
        for ok in [#"null"#, #""red""#, #""green""#, "3", "true", "[]", #"[{"k":[1,2]}, {"k":[1,2]}]"#] {
            XCTAssertTrue(m.matches(Array(ok.utf8)), ok)
        }
        for bad in [#""blue""#, "4", #"[{"k":[1]}]"#, "nul", "[true]"] { XCTAssertFalse(m.matches(Array(bad.utf8)), bad) }
    }

    func testStringLengthsPatternsAndFormats() throws {
        let m = try schema(#"{"type":"string","minLength":2,"maxLength":3}"#)
        XCTAssertFalse(m.matches(Array(#""a""#.utf8)))
        XCTAssertTrue(m.matches(Array(#""ab""#.utf8)))
        XCTAssertTrue(m.matches(Array(#""小鹅!""#.utf8)), "length counts characters, not bytes")
        XCTAssertTrue(m.matches(Array(#""\n\u00e9""#.utf8)), "escapes are one character each")
        XCTAssertFalse(m.matches(Array(#""abcd""#.utf8)))
        // The length cuts at the first character beyond it, even mid-way through its bytes.
        XCTAssertTrue(m.advance(m.start, bytes: Array(#""abc"#.utf8) + [0xE5]).isDead)

        let p = try schema(#"{"type":"string","pattern":"^[A-Z]{2}-\\d+(\\.\\d{1,2})?$"}"#)
        XCTAssertTrue(p.matches(Array(#""AB-12.5""#.utf8)))
        XCTAssertTrue(p.matches(Array(#""A\u0042-7""#.utf8)), "an escaped character matches as itself")
        XCTAssertFalse(p.matches(Array(#""AB-""#.utf8)))
        XCTAssertFalse(p.matches(Array(#""ab-1""#.utf8)))

        let d = try schema(#"{"type":"string","format":"date"}"#)
        XCTAssertTrue(d.matches(Array(#""2024-12-31""#.utf8)))
        XCTAssertFalse(d.matches(Array(#""2024-02-30""#.utf8)))
        XCTAssertFalse(d.matches(Array(#""2024-13-01""#.utf8)))
        let u = try schema(#"{"type":"string","format":"uuid"}"#)
        XCTAssertTrue(u.matches(Array(#""123e4567-e89b-12d3-a456-426614174000""#.utf8)))
        XCTAssertFalse(u.matches(Array(#""123e4567e89b-12d3-a456-426614174000""#.utf8)))
        let e = try schema(#"{"type":"string","format":"email"}"#)
        XCTAssertTrue(e.matches(Array(#""a.b+c@example.co.uk""#.utf8)))
        XCTAssertFalse(e.matches(Array(#""a@b""#.utf8)))
    }

    func testNumbersStayWithinTheirBoundsAtEveryPrefix() throws {
        let m = try schema(#"{"type":"integer","minimum":10,"exclusiveMaximum":200}"#)
        for ok in ["10", "199", "57"] { XCTAssertTrue(m.matches(Array(ok.utf8)), ok) }
        for bad in ["9", "200", "-10", "010", "1e2", "10.0"] { XCTAssertFalse(m.matches(Array(bad.utf8)), bad) }
        // No prefix the grammar takes is a dead end: "2" can become 20…199, "20" can end, "3" only 30…99.
        XCTAssertFalse(m.advance(m.start, bytes: Array("2".utf8)).isDead)
        XCTAssertTrue(m.advance(m.start, bytes: Array("0".utf8)).isDead)
        XCTAssertTrue(m.advance(m.start, bytes: Array("-".utf8)).isDead)
        XCTAssertTrue(m.advance(m.start, bytes: Array("300".utf8)).isDead)

        let x = try schema(#"{"type":"number","minimum":-1.5,"maximum":0.25}"#)
        for ok in ["-1.5", "0", "0.25", "-0.001", "-1"] { XCTAssertTrue(x.matches(Array(ok.utf8)), ok) }
        for bad in ["-1.51", "0.26", "1", "-2"] { XCTAssertFalse(x.matches(Array(bad.utf8)), bad) }
        XCTAssertNotNil(refusal(#"{"type":"integer","minimum":5,"maximum":4}"#))
        XCTAssertNotNil(refusal(#"{"type":"integer","exclusiveMinimum":1,"exclusiveMaximum":2}"#))
    }

    func testRecursiveReferences() throws {
        let m = try schema(##"{"$ref":"#/$defs/t","$defs":{"t":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/t"},"maxItems":2}},"required":["v"],"additionalProperties":false}}}"##)
        XCTAssertTrue(m.matches(Array(#"{"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4,"kids":[]}]}]}"#.utf8)))
        XCTAssertFalse(m.matches(Array(#"{"v":1,"kids":[{"v":2},{"v":3},{"v":4}]}"#.utf8)), "maxItems")
    }

    func testUnsupportedKeywordsAreRefusedByName() {
        for (schema, keyword) in [(#"{"type":"object","oneOf":[{"type":"object"}]}"#, "oneOf"),
                                  (#"{"type":"number","multipleOf":3}"#, "multipleOf"),
                                  (#"{"type":"object","patternProperties":{"a":{}}}"#, "patternProperties"),
                                  (#"{"type":"array","uniqueItems":true}"#, "uniqueItems"),
                                  (#"{"type":"string","format":"hostname"}"#, "hostname"),
                                  (#"{"type":"string","pattern":"(?=a)b"}"#, "look-around"),
                                  (#"{"type":"string","pattern":"(a)\\1"}"#, "back-references"),
                                  (#"{"$ref":"http://example.com/s.json"}"#, "http://example.com/s.json"),
                                  (##"{"$ref":"#/$defs/missing"}"##, "#/$defs/missing"),
                                  (#"{"not":{}}"#, "not"),
                                  (#"{"enum":[]}"#, "enum"),
                                  (#"false"#, "false")] {
            let r = refusal(schema)
            XCTAssertNotNil(r, schema)
            XCTAssertTrue(r?.contains(keyword) ?? false, "\(schema): \(r ?? "")")
        }
    }

    func testToolCallsRegexAndChoice() throws {
        let params = try JSONValue.parse(#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#)
        let one = Matcher(try SchemaCompiler.toolCalls([.init(name: "weather", parameters: params), .init(name: "time", parameters: nil)], parallel: false))
        let call = "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        XCTAssertTrue(one.matches(Array(call.utf8)))
        XCTAssertTrue(one.matches(Array("<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>".utf8)))
        XCTAssertFalse(one.matches(Array((call + "\n" + call).utf8)), "parallel_tool_calls false: one call")
        XCTAssertFalse(one.matches(Array("<tool_call>\n{\"name\": \"weather\", \"arguments\": {}}\n</tool_call>".utf8)))
        XCTAssertFalse(one.matches(Array("<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>".utf8)))
        let many = Matcher(try SchemaCompiler.toolCalls([.init(name: "weather", parameters: params)], parallel: true))
        XCTAssertTrue(many.matches(Array((call + "\n" + call).utf8)))

        let r = Matcher(try SchemaCompiler.regex(#"(yes|no) \(\d{1,2}%\)"#))
        XCTAssertTrue(r.matches(Array("yes (95%)".utf8)))
        XCTAssertFalse(r.matches(Array("maybe (95%)".utf8)))
        let c = Matcher(try SchemaCompiler.choice(["positive", "negative", "neutral", "neg"]))
        for w in ["positive", "neg", "negative"] { XCTAssertTrue(c.matches(Array(w.utf8)), w) }
        XCTAssertFalse(c.matches(Array("nega".utf8)))
        // Choices form a trie: the threads are the next distinct bytes, not the choices.
        let items = Matcher(try SchemaCompiler.choice((0..<1000).map { "item\($0)" }))
        XCTAssertLessThanOrEqual(items.advance(items.start, bytes: Array("item1".utf8)).threadCount, 11)
        // Shared runs are single literals; only branching nests, and deep branching is refused.
        let long = (0..<40).map { String(repeating: "x", count: 3000) + "\($0)" }
        XCTAssertTrue(Matcher(try SchemaCompiler.choice(long)).matches(Array(long[17].utf8)))
        let chain = (1...100).map { String(repeating: "a", count: $0) }
        XCTAssertTrue(Matcher(try SchemaCompiler.choice(chain)).matches(Array(chain[99].utf8)))
        XCTAssertThrowsError(try SchemaCompiler.choice((1...300).map { String(repeating: "a", count: $0) }))
    }

    /// Random sentences of each grammar parse as JSON and keep the schema's rules.
    func testRandomSentencesAreValid() throws {
        let m = try schema(#"{"type":"object","properties":{"n":{"type":"integer","minimum":-3,"maximum":3},"s":{"type":"string","maxLength":4},"l":{"type":"array","items":{"type":"number","exclusiveMinimum":0},"minItems":1,"maxItems":2}},"required":["n","s","l"]}"#)
        var rng = SeededRandom(seed: 7)
        for _ in 0..<200 {
            let bytes = try XCTUnwrap(m.randomSentence(using: &rng))
            let v = try JSONValue.parse(bytes)
            let n = try XCTUnwrap(v["n"]?.int)
            XCTAssertTrue((-3...3).contains(n))
            XCTAssertLessThanOrEqual(try XCTUnwrap(v["s"]?.string).count, 4)
            let l = try XCTUnwrap(v["l"]?.array)
            XCTAssertTrue((1...2).contains(l.count))
            for x in l { XCTAssertGreaterThan(try XCTUnwrap(x.double), 0) }
        }
        let any = Matcher(try SchemaCompiler.anyObject())
        for _ in 0..<100 {
            let bytes = try XCTUnwrap(any.randomSentence(using: &rng))
            XCTAssertNotNil(try JSONValue.parse(bytes).object)
        }
    }

    // MARK: Masks

    /// The brute-force mask: every token whose whole byte string the grammar takes.
    func bruteForce(_ c: TokenConstraint, _ tokens: [[UInt8]], _ excluded: Set<Int32>, _ s: Matcher.State) -> Set<Int32> {
        var out = Set<Int32>()
        for (id, bytes) in tokens.enumerated() where !bytes.isEmpty && !excluded.contains(Int32(id)) {
            if c.advance(s, bytes: bytes) != nil { out.insert(Int32(id)) }
        }
        return out
    }

    func checkMasks(_ tokenizer: Tokenizer, grammars: [Grammar], walks: Int, steps: Int = 40, seed: UInt64) throws {
        let excluded = Set(tokenizer.addedTokens.filter(\.special).map(\.id)).union(tokenizer.eosTokenIds)
        let vocab = TokenVocabulary(tokens: tokenizer.tokenBytes, excluded: excluded, endIds: tokenizer.eosTokenIds, size: tokenizer.vocabularySize + 7)
        var rng = SeededRandom(seed: seed)
        var checked = 0
        for g in grammars {
            let c = TokenConstraint(grammar: g, vocabulary: vocab)
            for _ in 0..<walks {
                var s = c.matcher.start
                for _ in 0..<steps {
                    let mask = c.computeMask(s)
                    let expected = bruteForce(c, tokenizer.tokenBytes, excluded, s)
                    let got = Set((0..<vocab.size).filter { mask.allows(Int32($0)) }.map(Int32.init))
                    XCTAssertEqual(got, expected, "mask differs from brute force")
                    XCTAssertEqual(mask.allowEnd, s.canFinish)
                    XCTAssertFalse((tokenizer.vocabularySize..<vocab.size).contains { mask.allows(Int32($0)) }, "rows past the vocabulary")
                    checked += 1
                    // Every allowed token leads to a state that can go on or end (no dead ends).
                    for id in got.prefix(200) {
                        let next = try XCTUnwrap(c.advance(s, bytes: tokenizer.tokenBytes[Int(id)]))
                        XCTAssertTrue(next.canContinue || next.canFinish)
                    }
                    if got.isEmpty || (mask.allowEnd && Double.random(in: 0..<1, using: &rng) < 0.15) { break }
                    let pick = got.randomElement(using: &rng)!
                    s = try XCTUnwrap(c.advance(s, bytes: tokenizer.tokenBytes[Int(pick)]))
                }
            }
        }
        XCTAssertGreaterThan(checked, 3 * grammars.count)
    }

    static let maskSchemas = [
        #"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":120},"tags":{"type":"array","items":{"enum":["x","yy"]}}},"required":["name","age"]}"#,
        #"{"type":"object","properties":{"short":{"type":"string","maxLength":3},"code":{"type":"string","pattern":"[a-c]+é"},"when":{"type":"string","format":"date-time"}},"required":["short","code","when"]}"#,
        #"{"type":"array","items":{"anyOf":[{"type":"number"},{"type":"string","minLength":1},{"type":"null"}]},"maxItems":4}"#,
    ]

    func maskGrammars() throws -> [Grammar] {
        try Self.maskSchemas.map { try SchemaCompiler.grammar(schema: try JSONValue.parse($0)) } + [
            try SchemaCompiler.anyObject(),
            try SchemaCompiler.regex("[0-9]{3}-[a-z]+|小鹅"),
            try SchemaCompiler.toolCalls([.init(name: "f", parameters: nil)], parallel: true),
        ]
    }

    /// On the test tokenizer (partial UTF-8 tokens, control characters, quotes): masks equal brute force.
    func testMasksEqualBruteForceOnTheTestTokenizer() throws {
        let t = try Tokenizer.load(directory: Fixtures.path("tokenizer"))
        try checkMasks(t, grammars: try maskGrammars(), walks: 6, seed: 1)
    }

    /// The same on the default model's 151,665-token vocabulary.
    func testMasksEqualBruteForceOnTheRealVocabulary() throws {
        let t = try Tokenizer.load(gguf: try GGUFFile(path: try Fixtures.defaultModel()))
        try checkMasks(t, grammars: try maskGrammars(), walks: 1, steps: 12, seed: 2)
    }
}
