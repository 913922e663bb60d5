import Foundation
import QwenEngine
import QwenGrammar
import QwenModel
import QwenRuntime
import XCTest

/// The scheduling policy and the output gate without a model: sequences, a KV pool and synthetic
/// logits are all they need.
final class SchedulerTests: XCTestCase {
    /// A pool of `blocks` blocks of 4 positions for a tiny configuration (no weights).
    func pool(_ blocks: Int) -> KVPool {
        let c = QwenConfig(architecture: .qwen3, hiddenSize: 8, intermediateSize: 8, layers: 1, heads: 1, kvHeads: 1, headDim: 8,
                           vocabSize: 100, rmsNormEps: 1e-6, ropeTheta: 10000, maxPositions: 1024, tieWordEmbeddings: true,
                           attentionBias: false)
        return KVPool(config: c, blocks: blocks, blockSize: 4)
    }

    func seq(_ prompt: [Int32], id: UInt64, batch: Bool = false) -> Seq {
        var r = EngineRequest(prompt: prompt, params: .greedy, maxTokens: 100)
        if batch { r.priority = .batch }
        return Seq(request: r, id: id, gate: OutputGate(request: r, endOfSequence: [99], tokenBytes: []))
    }

    /// What the engine does after a forward: the planned positions are written, and a sequence
    /// whose known tokens are all in the cache gets its next token.
    func ran(_ plan: Scheduler.Plan) {
        for (s, n) in plan.rows {
            let from = s.cache!.length
            let toks = s.draft.isEmpty ? Array(s.tokens[from..<(from + n)]) : [s.tokens[from]] + s.draft
            s.cache!.advance(toks)  // (reserved by the scheduler; no keys or values are computed)
            s.draft = []
            if s.cache!.length == s.tokens.count {
                s.tokens.append(7)
                s.generated += 1
            }
        }
    }

    func testBatchRowsUnderInteractiveLoadFollowTheCostModel() {
        let c = Scheduler.Config(maxRunning: 64, stepTokens: 512)
        XCTAssertEqual(c.batchRows(interactive: 0), Int.max)
        XCTAssertEqual(c.batchRows(interactive: 1), 1)  // at least one: a batch always advances
        // Ten interactive rows cost 1 + 9 * 0.25 = 3.25 one-row steps; 20% more is 0.65, two rows of 0.25.
        XCTAssertEqual(c.batchRows(interactive: 10), 2)
        XCTAssertEqual(c.batchRows(interactive: 50), 10)
    }

    func testBatchFillsAnIdleEngineAndYieldsToInteractiveWork() {
        let sch = Scheduler(config: .init(maxRunning: 16, stepTokens: 64), pool: pool(256))
        let batch = (0..<6).map { seq([1, 2, 3], id: UInt64($0), batch: true) }
        for s in batch { sch.enqueue(s) }
        // Alone, batch work takes every slot and the whole budget.
        var plan = sch.schedule { _, _, _ in [] }
        XCTAssertEqual(plan.rows.count, 6)
        ran(plan)
        // Interactive requests arrive: they are admitted ahead of waiting batch work and run
        // every step; batch rows shrink to what the cost model allows for one interactive row.
        let more = (6..<9).map { seq([1, 2, 3], id: UInt64($0), batch: true) }
        for s in more { sch.enqueue(s) }
        let users = (10..<20).map { seq([4, 5, 6, 7], id: UInt64($0)) }
        for s in users { sch.enqueue(s) }
        plan = sch.schedule { _, _, _ in [] }
        XCTAssertTrue(users.allSatisfy { u in plan.rows.contains { $0.seq === u } })
        XCTAssertFalse(more.contains { m in sch.running.contains { $0 === m } }, "no batch admission while interactive work waits")
        ran(plan)
        plan = sch.schedule { _, _, _ in [] }
        let batchRows = plan.rows.filter { $0.seq.isBatch }.reduce(0) { $0 + $1.tokens }
        XCTAssertEqual(batchRows, sch.config.batchRows(interactive: 10))
        XCTAssertEqual(plan.rows.filter { !$0.seq.isBatch }.count, 10)
        // Interactive rows come first in the plan's order of priority.
        XCTAssertFalse(plan.rows.prefix(10).contains { $0.seq.isBatch })
    }

    func testInteractiveWorkTakesASlotFromBatchWork() {
        let sch = Scheduler(config: .init(maxRunning: 4, stepTokens: 64), pool: pool(256))
        let batch = (0..<4).map { seq([1, 2, 3], id: UInt64($0), batch: true) }
        for s in batch { sch.enqueue(s) }
        ran(sch.schedule { _, _, _ in [] })
        let users = (10..<12).map { seq([4, 5, 6], id: UInt64($0)) }
        for u in users { sch.enqueue(u) }
        let plan = sch.schedule { _, _, _ in [] }
        XCTAssertTrue(users.allSatisfy { u in plan.rows.contains { $0.seq === u } })
        XCTAssertEqual(sch.running.count, 4)
        // The two newest batch sequences went back to the queue.
        XCTAssertTrue(sch.waiting.contains { $0 === batch[3] } && sch.waiting.contains { $0 === batch[2] })
    }

    func testInteractiveWorkTakesMemoryFromBatchWorkFirst() {
        // 8 blocks of 4 positions: two batch sequences of 12 tokens hold 8 blocks with their next token.
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 64), pool: pool(8))
        let b1 = seq(Array(1...12), id: 1, batch: true), b2 = seq(Array(1...12), id: 2, batch: true)
        sch.enqueue(b1)
        sch.enqueue(b2)
        ran(sch.schedule { _, _, _ in [] })
        XCTAssertEqual(sch.running.count, 2)
        let user = seq(Array(20...27), id: 3)
        sch.enqueue(user)
        let plan = sch.schedule { _, _, _ in [] }
        // The newest batch sequence went back to the queue; the interactive one runs.
        XCTAssertTrue(plan.rows.contains { $0.seq === user })
        XCTAssertTrue(sch.waiting.contains { $0 === b2 } && b2.cache == nil)
        XCTAssertTrue(sch.running.contains { $0 === b1 })
    }

    func testDecodeRowsFirstThenPromptChunksWithinTheBudget() {
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 10), pool: pool(64))
        let a = seq(Array(1...6), id: 1), b = seq(Array(1...30), id: 2)
        sch.enqueue(a)
        var plan = sch.schedule { _, _, _ in [] }
        XCTAssertEqual(plan.rows.map(\.tokens), [6])
        ran(plan)
        sch.enqueue(b)
        plan = sch.schedule { _, _, _ in [] }
        // a decodes (one row), b's prompt takes the other nine.
        XCTAssertTrue(plan.rows[0].seq === a && plan.rows[0].tokens == 1)
        XCTAssertTrue(plan.rows[1].seq === b && plan.rows[1].tokens == 9)
    }

    func testDraftsStayWithinTheBudgetAndLeaveEveryDecodeARow() {
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 6), pool: pool(64))
        let seqs = (0..<3).map { seq([1, 2], id: UInt64($0)) }
        for s in seqs { sch.enqueue(s) }
        ran(sch.schedule { _, _, _ in [] })  // three prompts of two tokens: the whole budget
        var rooms: [Int] = []
        let plan = sch.schedule { _, decoding, room in
            XCTAssertEqual(decoding, 3)
            rooms.append(room)
            return Array(repeating: 5, count: room)  // as many drafts as allowed
        }
        XCTAssertEqual(rooms, [3, 0, 0], "the first takes what the others' rows leave")
        XCTAssertEqual(plan.rows.map(\.tokens), [4, 1, 1])
        XCTAssertEqual(plan.rows.reduce(0) { $0 + $1.tokens }, 6)
    }

    func testDraftsAreDroppedBeforeAnyoneIsPreempted() {
        // Two sequences of 4 tokens, one block each; the fifth position needs a second block.
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 64), pool: pool(3))
        let a = seq([1, 2, 3], id: 1), b = seq([4, 5, 6], id: 2)
        sch.enqueue(a)
        sch.enqueue(b)
        ran(sch.schedule { _, _, _ in [] })
        // a asks for four drafts (two more blocks): only one block is left, so its drafts go.
        let plan = sch.schedule { s, _, _ in s === a ? [1, 1, 1, 1, 1] : [] }
        XCTAssertEqual(plan.rows.map(\.tokens), [1, 1])
        XCTAssertTrue(a.draft.isEmpty)
        XCTAssertEqual(sch.running.count, 2, "nobody was preempted")
    }

    func testTheNewestSequenceGivesItsMemoryBack() {
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 64), pool: pool(4))
        let old = seq([1, 2, 3], id: 1), mid = seq([4, 5, 6], id: 2), new = seq([7, 8, 9], id: 3)
        for s in [old, mid, new] { sch.enqueue(s) }
        ran(sch.schedule { _, _, _ in [] })  // prompts: one block each, one left
        ran(sch.schedule { _, _, _ in [] })  // the fourth positions fill each block
        let plan = sch.schedule { _, _, _ in [] }
        // Each needs a second block: old takes the last one; for mid the newest (new) is
        // preempted, and mid runs.
        XCTAssertEqual(old.cache!.blocks.count, 2)
        XCTAssertEqual(mid.cache!.blocks.count, 2)
        XCTAssertTrue(plan.rows.contains { $0.seq === mid })
        XCTAssertFalse(plan.rows.contains { $0.seq === new })
        XCTAssertNil(new.cache)
        XCTAssertTrue(sch.waiting.first === new, "back at the head of the queue")
        XCTAssertTrue(plan.outOfMemory.isEmpty)
    }

    func testALoneSequenceThatCannotFitIsOutOfMemory() {
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 64), pool: pool(2))
        let big = seq(Array(1...20), id: 1)
        sch.enqueue(big)
        var plan = sch.schedule { _, _, _ in [] }
        XCTAssertTrue(plan.outOfMemory.first === big, "refused at admission: it can never fit")
        XCTAssertTrue(sch.isIdle)
        // One that fits at first but grows past the pool while alone.
        let grows = seq(Array(1...7), id: 2)
        sch.enqueue(grows)
        ran(sch.schedule { _, _, _ in [] })
        ran(sch.schedule { _, _, _ in [] })
        plan = sch.schedule { _, _, _ in [] }
        XCTAssertTrue(plan.outOfMemory.first === grows)
        XCTAssertTrue(plan.rows.isEmpty)
    }

    func testASharedPromptIsAdoptedFromThePrefixCache() {
        let sch = Scheduler(config: .init(maxRunning: 8, stepTokens: 64), pool: pool(16))
        let first = seq(Array(1...10), id: 1)
        sch.enqueue(first)
        ran(sch.schedule { _, _, _ in [] })
        let second = seq(Array(1...9) + [50], id: 2)
        sch.enqueue(second)
        let plan = sch.schedule { _, _, _ in [] }
        XCTAssertEqual(second.cachedPromptTokens, 8, "two full blocks of four shared")
        XCTAssertEqual(plan.rows.first { $0.seq === second }?.tokens, 2)
    }

    // MARK: The output gate

    func testGateEndsOnEndTokensAndFollowsAGrammar() throws {
        let bytes: [[UInt8]] = (0..<128).map { [UInt8($0)] }
        let vocab = TokenVocabulary(tokens: bytes, excluded: [], endIds: [0], size: 128)
        var b = GrammarBuilder()
        let root = try RegexCompiler.compile("ab+", into: &b, raw: true)
        var r = EngineRequest(prompt: [1], params: .greedy, maxTokens: 10)
        r.constraint = TokenConstraint(grammar: Grammar(nodes: b.nodes, root: root), vocabulary: vocab)
        r.stopTokenIds = [5]
        var gate = OutputGate(request: r, endOfSequence: [0], tokenBytes: bytes)
        var logits = [Float](repeating: 1, count: 128)
        gate.mask(&logits)
        XCTAssertEqual(logits.indices.filter { logits[$0].isFinite }, [Int(UInt8(ascii: "a"))], "only 'a' may start")
        XCTAssertEqual(gate.accept(Int32(UInt8(ascii: "a"))), .more)
        XCTAssertEqual(gate.accept(Int32(UInt8(ascii: "b"))), .more)
        logits = [Float](repeating: 1, count: 128)
        gate.mask(&logits)
        XCTAssertEqual(Set(logits.indices.filter { logits[$0].isFinite }), [0, Int(UInt8(ascii: "b"))], "'b' or the end")
        if case .refused = gate.accept(Int32(UInt8(ascii: "z"))) {} else { XCTFail("the grammar takes no 'z'") }
        XCTAssertEqual(gate.accept(0), .end)
        XCTAssertEqual(gate.accept(5), .end, "a stop token id ends the output")
    }

    func testGateOpensTheReasoningBlockFirst() throws {
        let bytes: [[UInt8]] = (0..<128).map { [UInt8($0)] }
        let vocab = TokenVocabulary(tokens: bytes, excluded: [100, 101], endIds: [0], size: 128)
        var b = GrammarBuilder()
        let root = try RegexCompiler.compile("x", into: &b, raw: true)
        var r = EngineRequest(prompt: [1], params: .greedy, maxTokens: 10)
        r.constraint = TokenConstraint(grammar: Grammar(nodes: b.nodes, root: root), vocabulary: vocab)
        r.reasoningGate = ReasoningGate(open: 100, close: 101, inside: false)
        var gate = OutputGate(request: r, endOfSequence: [0], tokenBytes: bytes)
        var logits = [Float](repeating: 1, count: 128)
        gate.mask(&logits)
        XCTAssertEqual(logits.indices.filter { logits[$0].isFinite }, [100], "the block opens first")
        XCTAssertEqual(gate.accept(100), .more)
        logits = [Float](repeating: 1, count: 128)
        gate.mask(&logits)
        XCTAssertFalse(logits[0].isFinite, "no end inside the block")
        XCTAssertTrue(logits[42].isFinite, "anything else goes")
        XCTAssertEqual(gate.accept(42), .more)
        XCTAssertEqual(gate.accept(101), .more)
        XCTAssertEqual(gate.accept(Int32(UInt8(ascii: "x"))), .complete, "the grammar's whole answer ends it")
    }
}
