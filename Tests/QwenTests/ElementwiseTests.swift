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
        var gate = values
        gate.withUnsafeMutableBufferPointer { g in up.withUnsafeBufferPointer { Ops.siluMul(g.baseAddress!, $0.baseAddress!, count: g.count) } }
        for i in values.indices {
            let g = values[i]
            let want = g / (1 + expf(-g)) * up[i]
            if want.isFinite {
                XCTAssertEqual(gate[i], want, accuracy: max(1e-37, abs(want) * 3e-7), "gate \(g) up \(up[i])")
            } else {
                XCTAssertEqual(gate[i], want, "gate \(g) up \(up[i])")
            }
        }
    }
}
