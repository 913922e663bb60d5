import CQwenKernels
import Foundation
import QwenKernels
import QwenRuntime
import XCTest

final class ElementwiseTests: XCTestCase {
    /// The vectorised SiLU·up against the scalar f32 formula with libm's expf, over the whole
    /// range a gate can take (including gates where exp overflows or underflows in f32) and a
    /// length that leaves a scalar tail.
    func testSiluMulMatchesTheFormula() {
        var values: [Float] = [0, -0.0, 1e-30, -1e-30, 88, -88, 89, -89, 100, -100, 1e4, -1e4, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]
        var rng = SeededRandom(seed: 4)
        while values.count < 16 * 64 + 7 { values.append(Float(rng.unit() * 40 - 20)) }
        let up = values.indices.map { Float($0 % 7) - 3.5 }
        forEachCPULevel { level in
            for n in [values.count, 5] {  // the vector loops with a tail, and the scalar path alone
                var gate = Array(values.prefix(n))
                gate.withUnsafeMutableBufferPointer { g in up.withUnsafeBufferPointer { Ops.siluMul(g.baseAddress!, $0.baseAddress!, count: g.count) } }
                for i in 0..<n {
                    let g = values[i]
                    let want = g / (1 + expf(-g)) * up[i]
                    if want.isFinite {
                        XCTAssertEqual(gate[i], want, accuracy: max(1e-37, abs(want) * 3e-7), "\(level): gate \(g) up \(up[i])")
                    } else {
                        XCTAssertEqual(gate[i], want, "\(level): gate \(g) up \(up[i])")
                    }
                }
            }
        }
    }

    /// The fused cross-entropy row (loss, and softmax − one-hot in place) against the formula in
    /// double precision, at every level, on rows with extreme logits (exponentials that overflow or
    /// vanish in f32) and lengths that leave a tail; the loss and gradient are always finite.
    func testCrossEntropyRowMatchesTheFormula() {
        var rng = SeededRandom(seed: 8)
        let rows: [[Float]] = [
            (0..<1003).map { _ in Float(rng.unit() * 20 - 10) },
            (0..<37).map { $0 % 5 == 0 ? -3e38 : Float($0) * 0.5 },
            (0..<21).map { $0 == 3 ? 1e4 : -1e4 },
            [0, 0, 0, 0, 0, 0, 0],
        ]
        forEachCPULevel { level in
            for (r, z) in rows.enumerated() {
                let target = r == 2 ? 3 : z.count / 2, scale: Float = 0.25
                var g = z
                var top: Int32 = -1
                let loss = qwen_cross_entropy_row(&g, g.count, target, scale, &top)
                let m = Double(z.max()!)
                let sum = z.reduce(0.0) { $0 + Foundation.exp(Double($1) - m) }
                let want = m + Foundation.log(sum) - Double(z[target])
                XCTAssertEqual(Double(loss), want, accuracy: 1e-5 * max(1, abs(want)), "\(level) row \(r) loss")
                XCTAssertEqual(top != 0, z.firstIndex(of: z.max()!) == target, "\(level) row \(r) top")
                for i in z.indices {
                    let p = Foundation.exp(Double(z[i]) - m) / sum
                    let wantGrad = Double(scale) * (p - (i == target ? 1 : 0))
                    XCTAssertTrue(g[i].isFinite, "\(level) row \(r) [\(i)]")
                    XCTAssertEqual(Double(g[i]), wantGrad, accuracy: 1e-6, "\(level) row \(r) [\(i)]")
                }
            }
        }
    }
}
