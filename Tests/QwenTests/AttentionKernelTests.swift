import CQwenKernels
import Foundation
import QwenRuntime
import XCTest

/// The paged attention kernel against attention written out plainly in double precision:
/// head widths, group sizes and context lengths around the 16-key tiles, on block tables
/// that scatter a sequence over the pool.
final class AttentionKernelTests: XCTestCase {
    func testPagedAttentionMatchesPlainAttention() {
        var rng = SeededRandom(seed: 21)
        let blockSize = 16, poolBlocks = 24
        for (heads, kvHeads, hd) in [(14, 2, 64), (16, 8, 128), (2, 2, 16), (4, 1, 32)] {
            let kvw = kvHeads * hd
            let keys = (0..<(poolBlocks * blockSize * kvw)).map { _ in Float(rng.unit() * 2 - 1) }
            let values = (0..<(poolBlocks * blockSize * kvw)).map { _ in Float(rng.unit() * 2 - 1) }
            let table: [Int32] = (0..<poolBlocks).map { Int32($0) }.shuffled(using: &rng)
            for ctx in [1, 15, 16, 17, 40, 100, 300] {
                let q = (0..<(heads * hd)).map { _ in Float(rng.unit() * 4 - 2) }
                let scale = 1 / Float(hd).squareRoot()
                var out = [Float](repeating: .nan, count: heads * hd)
                var scratch = [Float](repeating: 0, count: (heads / kvHeads) * ctx)
                qwen_attend_paged(q, Int32(heads), Int32(kvHeads), Int32(hd), keys, values, table, Int32(blockSize), Int32(ctx),
                                  scale, &out, &scratch)
                // One kv head at a time (how a decoding row is spread over threads): the same values.
                var parts = [Float](repeating: .nan, count: heads * hd)
                for g in 0..<kvHeads {
                    qwen_attend_paged_groups(q, Int32(heads), Int32(kvHeads), Int32(hd), keys, values, table, Int32(blockSize), Int32(ctx),
                                             scale, &parts, &scratch, Int32(g), Int32(g + 1))
                }
                XCTAssertEqual(parts, out)
                func row(_ t: Int) -> Int { (Int(table[t / blockSize]) * blockSize + t % blockSize) * kvw }
                for h in 0..<heads {
                    let g = h / (heads / kvHeads)
                    let scores = (0..<ctx).map { t in
                        (0..<hd).reduce(0.0) { $0 + Double(q[h * hd + $1]) * Double(keys[row(t) + g * hd + $1]) } * Double(scale)
                    }
                    let m = scores.max()!
                    let e = scores.map { Foundation.exp($0 - m) }
                    let sum = e.reduce(0, +)
                    for i in 0..<hd {
                        let want = (0..<ctx).reduce(0.0) { $0 + e[$1] / sum * Double(values[row($1) + g * hd + i]) }
                        XCTAssertEqual(Double(out[h * hd + i]), want, accuracy: 2e-5, "heads \(heads)/\(kvHeads) hd \(hd) ctx \(ctx) head \(h) [\(i)]")
                    }
                }
            }
        }
    }
}
