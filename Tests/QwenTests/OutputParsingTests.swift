import QwenChat
import XCTest

/// Stop sequences and the reasoning / tool-call split, fed in awkward pieces.
final class OutputParsingTests: XCTestCase {
    func feedAll(_ m: inout StopMatcher, _ pieces: [String]) -> (String, Bool) {
        var out = ""
        for p in pieces {
            let (e, hit) = m.feed(p)
            out += e
            if hit { return (out, true) }
        }
        return (out + m.flush(), false)
    }

    func testStopSequenceSplitAcrossPiecesIsNeverEmitted() {
        var m = StopMatcher(stops: ["</end>", "STOP"])
        var emitted: [String] = []
        var hit = false
        for p in ["Hello </", "e", "nd> more"] {
            let (e, h) = m.feed(p)
            emitted.append(e)
            if h { hit = true; break }
        }
        XCTAssertTrue(hit)
        XCTAssertEqual(emitted.joined(), "Hello ")
        XCTAssertFalse(emitted.contains { $0.contains("<") })
        var m2 = StopMatcher(stops: ["STOP"])
        XCTAssertEqual(feedAll(&m2, ["ST", "ring S", "TOPPED"]).0, "STring ")
        var m3 = StopMatcher(stops: ["xyz"])
        XCTAssertEqual(feedAll(&m3, ["ab", "x", "y", "!"]).0, "abxy!")
    }

    func run(_ p: inout OutputParser, _ pieces: [String]) -> [OutputParser.Event] {
        var events: [OutputParser.Event] = []
        for piece in pieces { events += p.feed(piece) }
        events += p.finish()
        // Merge neighbouring text events for comparison.
        var merged: [OutputParser.Event] = []
        for e in events {
            switch (merged.last, e) {
            case (.content(let a)?, .content(let b)): merged[merged.count - 1] = .content(a + b)
            case (.reasoning(let a)?, .reasoning(let b)): merged[merged.count - 1] = .reasoning(a + b)
            default: merged.append(e)
            }
        }
        return merged
    }

    func testReasoningThenContent() {
        var p = OutputParser(reasoning: true, tools: false)
        XCTAssertEqual(run(&p, ["<th", "ink>\nstep one\n</thi", "nk>\n\nThe answer", " is 4."]),
                       [.reasoning("\nstep one\n"), .content("The answer is 4.")])
        var q = OutputParser(reasoning: true, tools: false, startInReasoning: true)
        XCTAssertEqual(run(&q, ["still thinking", "</think>\n\nDone"]), [.reasoning("still thinking"), .content("Done")])
        var r = OutputParser(reasoning: false, tools: false)
        XCTAssertEqual(run(&r, ["<think>x</think>y"]), [.content("<think>x</think>y")])
    }

    func testToolCalls() {
        var p = OutputParser(reasoning: false, tools: true, toolNames: ["get_weather"])
        let events = run(&p, ["Let me check.\n<tool", "_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                              "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"])
        XCTAssertEqual(events, [.content("Let me check.\n"),
                                .toolCall(.init(name: "get_weather", arguments: #"{"city":"Paris"}"#)), .content("\n"),
                                .toolCall(.init(name: "get_weather", arguments: #"{"city":"Oslo"}"#))])
        var bare = OutputParser(reasoning: false, tools: true, toolNames: ["get_weather"])
        XCTAssertEqual(run(&bare, [#"{"name": "get_weather", "#, #""arguments": {"city": "Rome"}}"#]),
                       [.toolCall(.init(name: "get_weather", arguments: #"{"city":"Rome"}"#))])
        var notACall = OutputParser(reasoning: false, tools: true, toolNames: ["get_weather"])
        XCTAssertEqual(run(&notACall, [#"{"a": 1}"#]), [.content(#"{"a": 1}"#)])
        var broken = OutputParser(reasoning: false, tools: true, toolNames: ["x"])
        XCTAssertEqual(run(&broken, ["<tool_call>{oops"]), [.content("<tool_call>{oops")])
    }
}
