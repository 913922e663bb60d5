import Foundation
import QwenKernels
import QwenRuntime
import XCTest

final class RuntimeTests: XCTestCase {
    func testOpenBLASUsesTheKernelsThisCPUCanRun() throws {
        let info = try BLAS.load()
        let expected = CPUFeatures.openBLASCoreType
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil || info.chosenCoreType != nil {
            XCTAssertEqual(info.chosenCoreType ?? "", expected)
        }
        if !expected.isEmpty {
            XCTAssertEqual(info.coreName.lowercased(), expected.lowercased(), "OpenBLAS reports \(info.coreName)")
        }
        // Its idle workers sleep instead of spinning on the cores ours need (a user's value is kept).
        XCTAssertNotNil(getenv("OPENBLAS_THREAD_TIMEOUT"), "OPENBLAS_THREAD_TIMEOUT is set before OpenBLAS loads")
        // And it computes: a small product checked by hand.
        let a: [Float] = [1, 2, 3, 4, 5, 6]  // 2×3
        let b: [Float] = [1, 0, 0, 1, 1, 1]  // 3×2
        var c = [Float](repeating: 0, count: 4)
        BLAS.sgemm(m: 2, n: 2, k: 3, a: a, lda: 3, b: b, ldb: 2, c: &c, ldc: 2)
        XCTAssertEqual(c, [4, 5, 10, 11])
    }

    func testSamplingIsReproducibleWithASeed() {
        var logits = [Float](repeating: 0, count: 1000)
        for i in 0..<1000 { logits[i] = sinf(Float(i)) * 3 }
        func draw(_ seed: UInt64, _ p: SamplingParams) -> [Int32] {
            var params = p
            params.seed = seed
            var s = Sampler(params: params)
            return (0..<50).map { _ in s.sample(logits) }
        }
        let p = SamplingParams(temperature: 0.9, topK: 40, topP: 0.95, minP: 0.01)
        XCTAssertEqual(draw(7, p), draw(7, p))
        XCTAssertNotEqual(draw(7, p), draw(8, p))
        // Greedy, top-k 1 and a tiny top-p all pick the maximum.
        let best = Sampler.argmax(logits)
        XCTAssertEqual(Set(draw(1, .greedy)), [best])
        XCTAssertEqual(Set(draw(1, SamplingParams(temperature: 1, topK: 1))), [best])
        XCTAssertEqual(Set(draw(1, SamplingParams(temperature: 1, topP: 1e-6))), [best])
        // top-k 3 never leaves the three largest.
        let top3 = Set(logits.enumerated().sorted { $0.element > $1.element }.prefix(3).map { Int32($0.offset) })
        XCTAssertTrue(Set(draw(3, SamplingParams(temperature: 5, topK: 3))).isSubset(of: top3))
    }

    func testSamplingFollowsTheDistribution() {
        // Two tokens with probabilities 0.75 / 0.25 at temperature 1.
        let logits: [Float] = [log(3), 0, -.infinity]
        var s = Sampler(params: SamplingParams(temperature: 1, seed: 42))
        var zeros = 0
        for _ in 0..<4000 where s.sample(logits) == 0 { zeros += 1 }
        XCTAssertEqual(Double(zeros) / 4000, 0.75, accuracy: 0.03)
    }

    func testPenaltiesAndBias() {
        var p = SamplingParams.greedy
        p.repetitionPenalty = 2
        p.presencePenalty = 0.5
        p.frequencyPenalty = 0.25
        p.logitBias = [3: 10]
        var logits: [Float] = [4, -4, 1, 0]
        Sampler(params: p).adjust(&logits, history: [0, 0, 1])
        let want: [Float] = [1, -8.75, 1, 10]  // 4/2 - 0.5 - 2·0.25; -4·2 - 0.5 - 0.25
        XCTAssertEqual(logits, want)
    }

    func testSHA256KnownVectors() {
        var h = SHA256()
        h.update(Array("abc".utf8))
        XCTAssertEqual(SHA256.hex(h.finalize()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        var e = SHA256()
        XCTAssertEqual(SHA256.hex(e.finalize()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        var long = SHA256()
        let chunk = [UInt8](repeating: 0x61, count: 1000)
        for _ in 0..<1000 { long.update(chunk) }  // one million 'a'
        XCTAssertEqual(SHA256.hex(long.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testCommandLineGeneratesGreedyText() throws {
        let (status, out, err) = try runProcess(Fixtures.binary, [
            "generate", "--model", Fixtures.path("qwen3-tiny-f32"), "--prompt", "Hello, world! It's a test.",
            "--max-tokens", "5", "--ignore-eos",
        ])
        XCTAssertEqual(status, 0, err)
        XCTAssertFalse(out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        let (s2, _, e2) = try runProcess(Fixtures.binary, ["generate", "--prompt", "x", "--top-p", "0"])
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(e2.contains("--top-p"), e2)
    }
}

/// The sampler prunes before sorting (a histogram finds where top-k / top-p end; min-p filters
/// first); the draws must be those of sorting every candidate, as it did before.
final class SamplerPruningTests: XCTestCase {
    /// The unpruned reference: sort all candidates, then top-k, top-p, min-p.
    static func reference(_ logits: [Float], _ p: SamplingParams, _ u: Float) -> Int32 {
        var maxL = -Float.infinity
        for l in logits where l > maxL { maxL = l }
        var cand: [(id: Int32, p: Float)] = []
        for (i, l) in logits.enumerated() where l >= maxL - 30 * p.temperature { cand.append((Int32(i), expf((l - maxL) / p.temperature))) }
        cand.sort { $0.p > $1.p || ($0.p == $1.p && $0.id < $1.id) }
        if p.topK > 0 && cand.count > p.topK { cand.removeSubrange(p.topK...) }
        let total = cand.reduce(0) { $0 + $1.p }
        if p.topP < 1 {
            var acc: Float = 0, keep = cand.count
            for (i, c) in cand.enumerated() {
                acc += c.p / total
                if acc >= p.topP { keep = i + 1; break }
            }
            cand.removeSubrange(keep...)
        }
        if p.minP > 0 { cand.removeAll { $0.p < p.minP } }
        var r = u * cand.reduce(0) { $0 + $1.p }
        for c in cand {
            r -= c.p
            if r < 0 { return c.id }
        }
        return cand.last!.id
    }

    func testPrunedSamplingDrawsWhatFullSortingDraws() {
        var rng = SeededRandom(seed: 99)
        var same = 0, total = 0
        for trial in 0..<300 {
            let n = 3000 + trial * 7
            let scale = Float(1 + trial % 5) * 2
            let logits = (0..<n).map { _ in (rng.unit() - 0.5) * scale + (rng.unit() < 0.01 ? 6 : 0) }
            var p = SamplingParams(temperature: [0.5, 1, 1.3][trial % 3], topK: [0, 5, 40, 1000][trial % 4],
                                   topP: [1, 0.95, 0.5][trial / 4 % 3], minP: [0, 0.05][trial / 12 % 2], seed: UInt64(trial))
            if p.topK == 0 && p.topP == 1 && p.minP == 0 { p.topP = 0.9 }
            var s = Sampler(params: p)
            var copy = SeededRandom(seed: UInt64(trial))
            for _ in 0..<5 {
                let got = s.sample(logits)
                let want = Self.reference(logits, p, copy.unit())
                total += 1
                if got == want { same += 1 }
            }
        }
        // Equal but for float rounding at a boundary (the total is summed in another order).
        XCTAssertGreaterThanOrEqual(Double(same) / Double(total), 0.995, "\(same) of \(total)")
    }
}
