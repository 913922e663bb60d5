import Foundation
import QwenEngine
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// Speculative decoding: prompt lookup and the draft-length policy alone (no model), the KV
/// cache's rollback, and the engine's outputs with speculation on and off.
final class SpeculationTests: XCTestCase {
    // MARK: Prompt lookup

    func testPromptLookupProposesWhatFollowedTheBestMatch() {
        let l = PromptLookup()
        // "7 8" occurred twice before, each matching two tokens; the latest wins.
        let seq: [Int32] = [7, 8, 1, 2, 3, 9, 7, 8, 40, 41, 42, 5, 7, 8]
        XCTAssertEqual(l.draft(seq, count: 3), [40, 41, 42])
        XCTAssertEqual(l.draft(seq, count: 10), [40, 41, 42, 5], "a two-token match drafts at most four")
        // The occurrence that matches further back wins over a more recent one.
        XCTAssertEqual(l.draft([3, 7, 8, 1, 2, 9, 7, 8, 4, 3, 7, 8], count: 2), [1, 2])
        XCTAssertEqual(l.draft([1, 2, 3, 4, 5], count: 4), [], "no earlier match")
        XCTAssertEqual(l.draft([5, 5], count: 4), [], "too short to match")
        XCTAssertEqual(l.draft(seq, count: 0), [])
        // A long match (the output copying a passage) drafts as far as asked.
        let passage: [Int32] = Array(100..<140)
        let copying = passage + [1, 2] + Array(passage[0..<10])
        XCTAssertEqual(l.draft(copying, count: 12), Array(passage[10..<22]))
        // A prediction is searched too; its longer match wins.
        XCTAssertEqual(l.draft([1, 2, 3, 4], count: 3, reference: [9, 3, 4, 10, 11, 12, 13]), [10, 11, 12])
        XCTAssertEqual(l.draft([1, 2, 3, 4, 0, 3, 4], count: 3, reference: [0, 3, 4, 20, 21]), [20, 21], "three tokens matched beat two")
        XCTAssertEqual(l.draft([1, 2, 3, 4], count: 3, reference: [3, 4]), [], "a match at the reference's end has nothing after it")
    }

    // MARK: Draft policy

    func testDraftPolicyGrowsWithAcceptanceAndBacksOffWithout() {
        var p = DraftPolicy()
        let first = p.length(limit: 12, rowCost: 0.25, sequences: 1, force: false)
        XCTAssertGreaterThan(first, 0, "a fresh sequence tries drafts")
        for _ in 0..<8 { p.record(drafted: 6, accepted: 6) }
        XCTAssertGreaterThan(p.acceptance, 0.9)
        let long = p.length(limit: 12, rowCost: 0.25, sequences: 1, force: false)
        XCTAssertGreaterThan(long, first, "accepted drafts lengthen")
        // A middling acceptance pays for short drafts alone, less so in a full batch (each
        // sequence's extra tokens are a smaller share of the step's output).
        var middling = DraftPolicy(prior: 0.7)
        let alone = middling.length(limit: 12, rowCost: 0.25, sequences: 1, force: false)
        XCTAssertGreaterThan(alone, 0)
        XCTAssertLessThan(middling.length(limit: 12, rowCost: 0.25, sequences: 12, force: false), alone)
        for _ in 0..<30 { p.record(drafted: 2, accepted: 0) }
        XCTAssertLessThan(p.acceptance, 0.1)
        XCTAssertEqual(p.length(limit: 12, rowCost: 0.25, sequences: 1, force: false), 0, "drafts that fail stop")
        // After backing off it tries a single token now and then.
        let probes = (0..<32).map { _ in p.length(limit: 12, rowCost: 0.25, sequences: 1, force: false) }
        XCTAssertEqual(probes.filter { $0 == 1 }.count, 2)
        XCTAssertEqual(p.length(limit: 5, rowCost: 0.25, sequences: 40, force: true), 5, "forced: the limit")
        XCTAssertEqual(p.length(limit: 0, rowCost: 0.25, sequences: 1, force: true), 0)
    }

    // MARK: KV rollback

    /// Forty positions of the tiny model computed into reserved room of a 16-block pool, none recorded.
    func computedForty(stride: Int, offset: Int) throws -> (LoadedModel, KVPool, KVCache, [Int32]) {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"))
        let pool = KVPool(config: m.model.config, blocks: 16)
        let toks: [Int32] = (0..<40).map { Int32(($0 * stride + offset) % 600) }
        let a = KVCache(pool: pool)
        XCTAssertTrue(a.reserve(40))
        _ = try m.model.compute([QwenModel.Item(cache: a, tokens: toks, logits: .none)])
        return (m, pool, a, toks)
    }

    /// The engine's rollback: forty positions computed into reserved room, twenty kept (recorded),
    /// the rest's blocks returned; nothing past the kept positions is ever published.
    func testRefusedPositionsAreNeverRecordedAndTheirBlocksGoBack() throws {
        let (m, pool, a, toks) = try computedForty(stride: 37, offset: 11)
        XCTAssertEqual(a.length, 0, "compute records nothing")
        XCTAssertEqual(a.blocks.count, 3)
        a.advance(Array(toks[0..<20]))
        a.releaseSpareBlocks()
        XCTAssertEqual(a.length, 20)
        XCTAssertEqual(a.blocks.count, 2, "the third block went back")
        XCTAssertEqual(pool.usedBlocks, 2)
        XCTAssertTrue(pool.isPublished(a.blocks[0]), "the kept full block is reusable")
        XCTAssertFalse(pool.isPublished(a.blocks[1]), "the block position 20 falls in is not full")
        XCTAssertEqual(KVCache(pool: pool).adoptPrefix(of: toks), 16, "only kept positions are found by prefix lookup")
        // Writing on gives what a cache that never held the refused tokens gives.
        let next: [Int32] = [5, 6, 7, 8, 9, 10]
        let got = try m.model.forward([QwenModel.Item(cache: a, tokens: next, logits: .all)])[0]
        let fresh = KVCache(pool: pool)
        let want = try m.model.forward([QwenModel.Item(cache: fresh, tokens: Array(toks[0..<20]) + next, logits: .all)])[0]
        let tail = Array(want[(20 * m.model.config.vocabSize)...])
        XCTAssertEqual(got.count, tail.count)
        // (Equal up to the order of sums: six rows and twenty-six take different BLAS paths.)
        XCTAssertLessThan(zip(got, tail).map { abs($0 - $1) }.max()!, 1e-4)
        a.free()
        fresh.free()
        XCTAssertEqual(pool.usedBlocks, 0)
    }

    /// A draft model's cache rolled back over positions it had recorded (drafts not kept): the
    /// blocks published with them leave the prefix cache, later blocks go back to the pool, and
    /// writing on gives what a cache that never held them gives.
    func testRollbackForgetsRecordedPositionsAndWithdrawsTheirBlocks() throws {
        let (m, pool, a, toks) = try computedForty(stride: 53, offset: 7)
        a.advance(toks)
        XCTAssertTrue(pool.isPublished(a.blocks[1]), "positions 16..<32 were published")
        a.rollback(to: 20)
        XCTAssertEqual(a.length, 20)
        XCTAssertEqual(a.filledTokens, Array(toks[0..<20]))
        XCTAssertEqual(a.blocks.count, 2, "the third block went back")
        XCTAssertEqual(pool.usedBlocks, 2)
        XCTAssertTrue(pool.isPublished(a.blocks[0]))
        XCTAssertFalse(pool.isPublished(a.blocks[1]), "a block holding forgotten positions is withdrawn")
        XCTAssertEqual(KVCache(pool: pool).adoptPrefix(of: toks), 16, "prefix lookup finds only what is still held")
        let next: [Int32] = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
        XCTAssertTrue(a.reserve(next.count))
        let got = try m.model.compute([QwenModel.Item(cache: a, tokens: next, logits: .all)])[0]
        a.advance(next)
        let fresh = KVCache(pool: pool)
        XCTAssertTrue(fresh.reserve(33))
        let want = try m.model.compute([QwenModel.Item(cache: fresh, tokens: Array(toks[0..<20]) + next, logits: .all)])[0]
        let tail = Array(want[(20 * m.model.config.vocabSize)...])
        XCTAssertLessThan(zip(got, tail).map { abs($0 - $1) }.max()!, 1e-4)
        XCTAssertTrue(pool.isPublished(a.blocks[1]), "refilled, the block is published again")
        a.rollback(to: 0)
        XCTAssertEqual(a.length, 0)
        XCTAssertTrue(a.blocks.isEmpty)
        fresh.free()
        XCTAssertEqual(pool.usedBlocks, 0)
    }

    // MARK: The engine

    struct Output: Equatable {
        var tokens: [[Int32]]
        var logprobs: [[Float]]
        var reasons: [FinishReason?]
        var usage: EngineUsage?
    }

    func run(_ e: Engine, _ r: EngineRequest) async throws -> Output {
        var o = Output(tokens: Array(repeating: [], count: r.n), logprobs: Array(repeating: [], count: r.n),
                       reasons: Array(repeating: nil, count: r.n), usage: nil)
        for await ev in try e.submit(r).events {
            switch ev {
            case .token(let i, let t):
                o.tokens[i].append(t.token)
                if let lp = t.logprob { o.logprobs[i].append(lp) }
            case .finished(let i, let reason): o.reasons[i] = reason
            case .done(let u): o.usage = u
            case .failed(let m): XCTFail(m)
            case .heartbeat: break
            }
        }
        return o
    }

    func engine(_ dir: String = "qwen3-tiny-f32", compute: ComputeMode = .f32, stepTokens: Int = 512,
                draft: QwenModel? = nil) throws -> (Engine, LoadedModel) {
        let m = try LoadedModel.load(path: Fixtures.path(dir), compute: compute)
        var c = Engine.Config()
        c.stepTokens = stepTokens
        c.kvBlocks = 256
        let e = Engine(model: m.model, tokenizer: m.tokenizer, config: c, draft: draft)
        e.start()
        addTeardownBlock { e.shutdown(grace: 0) }
        // References run on a second copy: a model runs one forward at a time.
        return (e, try LoadedModel.load(path: Fixtures.path(dir), compute: compute))
    }

    /// Greedy and seeded requests give the same tokens, log-probabilities and finish reasons with
    /// drafts verified as without; the drafts are real (proposed, some kept, some refused), and
    /// every KV block comes back.
    func testOutputsAreTheSameWithSpeculationOnAndOff() async throws { try await sameOutputs("qwen3-tiny-f32", .f32) }
    func testOutputsAreTheSameWithSpeculationOnAndOffInt8() async throws { try await sameOutputs("qwen3-tiny.gguf", .int8) }

    func sameOutputs(_ dir: String, _ compute: ComputeMode) async throws {
        let (e, m) = try engine(dir, compute: compute)
        let vocab = m.model.config.vocabSize
        var rng = SeededRandom(seed: 5)
        var drafted = 0, kept = 0
        for k in 0..<10 {
            let len = 4 + Int(rng.next() % 30)
            let prompt = (0..<len).map { _ in Int32(rng.next() % UInt64(vocab - 10)) }
            var r = EngineRequest(prompt: prompt, params: .greedy, maxTokens: 24 + k)
            r.ignoreEOS = k % 3 != 0
            r.logprobs = 2
            switch k % 5 {
            case 1: r.params = SamplingParams(temperature: 0.7, topK: 20, topP: 0.95, seed: UInt64(k))
            case 2: r.params.repetitionPenalty = 1.2; r.params.logitBias = [Int32(prompt[0]): 3]
            case 3: r.n = 3; r.params = SamplingParams(temperature: 0.5, seed: 77)
            case 4: r.stopTokenIds = [Int32(prompt[1])]
            default: break
            }
            r.speculative = SpeculativeOptions(mode: .off)
            let plain = try await run(e, r)
            // The prediction is the plain output itself (and then some): most drafts are kept,
            // and where sampling or a stop diverges from it they are refused.
            r.prediction = plain.tokens[0] + [1, 2, 3]
            r.speculative = SpeculativeOptions(mode: .ngram, maxDraftTokens: 6)
            let spec = try await run(e, r)
            XCTAssertEqual(spec.tokens, plain.tokens, "request \(k)")
            // Log-probabilities are the target's own: bit for bit in the int8 mode, whose rows never
            // depend on the batch; with f32 weights a few rows take sgemm where one takes sgemv.
            XCTAssertEqual(spec.logprobs.map(\.count), plain.logprobs.map(\.count))
            for (a, b) in zip(spec.logprobs.joined(), plain.logprobs.joined()) {
                if compute == .int8 { XCTAssertEqual(a, b, "request \(k)") } else { XCTAssertEqual(a, b, accuracy: 1e-4, "request \(k)") }
            }
            XCTAssertEqual(spec.reasons, plain.reasons, "request \(k)")
            XCTAssertEqual(spec.usage?.completionTokens, plain.usage?.completionTokens)
            XCTAssertEqual(plain.usage?.draftTokens, 0)
            drafted += spec.usage?.draftTokens ?? 0
            kept += spec.usage?.acceptedDraftTokens ?? 0
            if k % 2 == 0 && r.n == 1 {
                // A continuation adopts the blocks this request published: they hold only kept
                // tokens' keys and values, so it gets what a fresh cache gives.
                var next = EngineRequest(prompt: prompt + spec.tokens[0], params: .greedy, maxTokens: 6)
                next.ignoreEOS = true
                next.speculative = SpeculativeOptions(mode: .off)
                let cont = try await run(e, next)
                XCTAssertGreaterThan(cont.usage?.cachedTokens ?? 0, 0, "request \(k): the prefix cache was used")
                let fresh = try Generator(model: m.model, tokenizer: m.tokenizer)
                    .generate(prompt: next.prompt, maxTokens: 6, params: .greedy, ignoreEOS: true).tokens
                XCTAssertEqual(cont.tokens[0], fresh, "request \(k)")
            }
        }
        print("speculation (\(dir)): \(kept) of \(drafted) drafted tokens kept")
        XCTAssertGreaterThan(kept, 50, "drafts were verified and kept")
        XCTAssertLessThan(kept, drafted, "some drafts were refused (the rollback ran)")
        for _ in 0..<200 where e.snapshot.kvBlocksUsed > 0 { try await Task.sleep(nanoseconds: 10_000_000) }
        XCTAssertEqual(e.snapshot.kvBlocksUsed, 0)
    }

    /// A draft model proposes: with the same weights every greedy draft is kept; with the same
    /// checkpoint quantized (Q8_0/Q4_0, int8 products) some are refused. Either way greedy and
    /// seeded outputs, log-probabilities and finish reasons are those of plain decoding, and every
    /// draft cache and KV block comes back.
    func testDraftModelOutputsAreTheSameAndItsCachesGoBack() async throws {
        for (draftDir, compute) in [("qwen3-tiny-f32", ComputeMode.f32), ("qwen3-tiny.gguf", .int8)] {
            let draft = try LoadedModel.load(path: Fixtures.path(draftDir), compute: compute).model
            let (e, m) = try engine(draft: draft)
            let vocab = m.model.config.vocabSize
            var rng = SeededRandom(seed: 9)
            var drafted = 0, kept = 0, greedyDrafted = 0, greedyKept = 0
            for k in 0..<8 {
                let prompt = (0..<(5 + Int(rng.next() % 20))).map { _ in Int32(rng.next() % UInt64(vocab - 10)) }
                var r = EngineRequest(prompt: prompt, params: .greedy, maxTokens: 20 + k)
                r.ignoreEOS = true
                r.logprobs = 2
                switch k % 4 {
                case 1: r.params = SamplingParams(temperature: 0.7, topK: 20, topP: 0.95, seed: UInt64(k))
                case 2: r.params.repetitionPenalty = 1.2; r.params.logitBias = [Int32(prompt[0]): 3]
                case 3: r.n = 2; r.params = SamplingParams(temperature: 0.5, seed: 77)
                default: break
                }
                r.speculative = SpeculativeOptions(mode: .off)
                let plain = try await run(e, r)
                r.speculative = SpeculativeOptions(mode: .draft, maxDraftTokens: 5)
                let spec = try await run(e, r)
                XCTAssertEqual(spec.tokens, plain.tokens, "\(draftDir): request \(k)")
                XCTAssertEqual(spec.reasons, plain.reasons, "\(draftDir): request \(k)")
                for (a, b) in zip(spec.logprobs.joined(), plain.logprobs.joined()) { XCTAssertEqual(a, b, accuracy: 1e-4) }
                drafted += spec.usage?.draftTokens ?? 0
                kept += spec.usage?.acceptedDraftTokens ?? 0
                if k % 4 == 0 {
                    greedyDrafted += spec.usage?.draftTokens ?? 0
                    greedyKept += spec.usage?.acceptedDraftTokens ?? 0
                }
            }
            print("draft model \(draftDir): \(kept) of \(drafted) drafted tokens kept")
            XCTAssertGreaterThan(drafted, 40)
            XCTAssertGreaterThan(kept, 0)
            if draftDir == "qwen3-tiny-f32" {
                // All but a near-tie, where a batched row's last bits differ from a single row's.
                XCTAssertGreaterThanOrEqual(Double(greedyKept), 0.95 * Double(greedyDrafted), "the model's own greedy drafts are kept")
            } else {
                XCTAssertLessThan(kept, drafted, "a different model's drafts are sometimes refused (its cache rolls back)")
            }
            for _ in 0..<200 where e.snapshot.kvBlocksUsed > 0 || e.drafter?.sequences != 0 { try await Task.sleep(nanoseconds: 10_000_000) }
            XCTAssertEqual(e.snapshot.kvBlocksUsed, 0)
            XCTAssertEqual(e.drafter?.sequences, 0, "every draft cache went back")
        }
    }

    /// A growable pool with a bound grows to it and no further.
    func testABoundedGrowablePoolStopsAtItsBound() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"))
        let pool = KVPool(config: m.model.config, blocks: 1, growable: true, maxBlocks: 4)
        let c = KVCache(pool: pool)
        XCTAssertTrue(c.reserve(64))
        XCTAssertEqual(pool.blockCount, 4)
        XCTAssertFalse(c.reserve(80), "a fifth block is past the bound")
        XCTAssertEqual(pool.blockCount, 4)
        c.free()
        XCTAssertEqual(pool.usedBlocks, 0)
    }

    /// The draft pool is bounded: a sequence that does not fit drafts nothing and holds nothing.
    func testAFullDraftPoolDraftsNothingAndHoldsNothing() throws {
        let d = DraftModel(model: try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32")).model, blocks: 2)
        let key = ObjectIdentifier(self)
        let short: [Int32] = [5, 6, 7, 8]
        XCTAssertEqual(d.propose(for: key, tokens: short, count: 3, vocabulary: d.model.config.vocabSize).count, 3, "it fits: a draft")
        let long = (0..<40).map { Int32($0 % 500) }
        XCTAssertEqual(d.propose(for: key, tokens: long, count: 3, vocabulary: d.model.config.vocabSize), [], "40 positions do not fit in 2 blocks of 16")
        XCTAssertEqual(d.sequences, 0, "its cache went back")
        XCTAssertEqual(d.propose(for: key, tokens: short, count: 3, vocabulary: d.model.config.vocabSize).count, 3, "and the pool serves again")
    }

    /// Sampling with speculation draws from the target's distribution: the token at a verified
    /// position, over many seeds, follows the model's own probabilities for it (a chi-square test
    /// against the exact top-k distribution, with drafts of the most likely token kept and
    /// refused), and each seed gives the same tokens as plain sampling.
    func testSampledTokensFollowTheTargetDistribution() async throws {
        let (e, m) = try engine()
        let prompt: [Int32] = [11, 12, 13, 14, 11, 12, 13]
        let params = SamplingParams(temperature: 1, topK: 6, seed: 0)
        // The exact distribution of the second token given the first: softmax over the top k.
        var exact: [Int32: [Int32: Double]] = [:]
        func distribution(after t1: Int32) throws -> [Int32: Double] {
            if let d = exact[t1] { return d }
            let c = KVCache(config: m.model.config)
            let l = try m.model.forward([QwenModel.Item(cache: c, tokens: prompt + [t1], logits: .last)])[0]
            let top = l.enumerated().sorted { $0.element > $1.element }.prefix(params.topK)
            let z = top.reduce(0.0) { $0 + exp(Double($1.element - top.first!.element)) }
            var d: [Int32: Double] = [:]
            for (i, v) in top { d[Int32(i)] = exp(Double(v - top.first!.element)) / z }
            exact[t1] = d
            return d
        }
        var observed: [Int32: Int] = [:], expected: [Int32: Double] = [:]
        var drafted = 0, kept = 0
        let seeds = 400
        for seed in 0..<seeds {
            var p = params
            p.seed = UInt64(seed)
            // Three tokens: the second is verified as a draft, the third is the one after it.
            var r = EngineRequest(prompt: prompt, params: p, maxTokens: 3)
            r.ignoreEOS = true
            r.speculative = SpeculativeOptions(mode: .off)
            let plain = try await run(e, r)
            let t1 = plain.tokens[0][0]
            let d = try distribution(after: t1)
            // Draft the most likely second token: kept about as often as it is sampled.
            r.prediction = [13, t1, d.max { $0.value < $1.value }!.key, 5]
            r.speculative = SpeculativeOptions(mode: .ngram, maxDraftTokens: 1)
            let spec = try await run(e, r)
            XCTAssertEqual(spec.tokens, plain.tokens, "seed \(seed)")
            observed[spec.tokens[0][1], default: 0] += 1
            for (t, q) in d { expected[t, default: 0] += q }
            drafted += spec.usage?.draftTokens ?? 0
            kept += spec.usage?.acceptedDraftTokens ?? 0
        }
        XCTAssertGreaterThan(drafted, seeds / 2, "the second token was verified as a draft")
        XCTAssertGreaterThan(kept, drafted / 10)
        XCTAssertLessThan(kept, drafted * 9 / 10)
        // Chi-square over tokens expected at least 5 times (the rest pooled).
        var chi = 0.0, bins = 0, restE = 0.0, restO = 0
        for (t, x) in expected {
            let o = Double(observed[t] ?? 0)
            if x >= 5 {
                chi += (o - x) * (o - x) / x
                bins += 1
            } else {
                restE += x
                restO += observed[t] ?? 0
            }
        }
        if restE > 0 {
            chi += (Double(restO) - restE) * (Double(restO) - restE) / restE
            bins += 1
        }
        XCTAssertEqual(observed.values.reduce(0, +), seeds)
        XCTAssertTrue(observed.keys.allSatisfy { expected[$0] != nil }, "a token outside the top k")
        let dof = max(bins - 1, 1)
        print("speculative sampling: \(kept) of \(drafted) drafts kept; chi-square \(chi) over \(dof) degrees of freedom")
        // Well above the 0.999 quantile of chi-square for these degrees of freedom (≈ 2.3·dof + 9).
        XCTAssertGreaterThan(bins, 2)
        XCTAssertLessThan(chi, 3 * Double(dof) + 12)
    }
}
