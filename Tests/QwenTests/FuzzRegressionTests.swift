import Foundation
import QwenFuzzTargets
import XCTest

/// Every input the fuzzers ever found a crash with (Tests/Fuzz/<target>/, kept by `make fuzz`)
/// goes through its target again: a regression crashes this test process.
final class FuzzRegressionTests: XCTestCase {
    func testSavedFuzzInputs() throws {
        let root = Fixtures.root + "/../Fuzz"
        var replayed = 0
        for target in FuzzTargets.names {
            let dir = root + "/" + target
            guard let files = try? FileManager.default.contentsOfDirectory(atPath: dir) else { continue }
            for f in files.sorted() {
                FuzzTargets.run(target, [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))))
                replayed += 1
            }
        }
        XCTAssertGreaterThan(replayed, 0, "no saved fuzz inputs found under \(root)")
    }

    func testEveryTargetTakesGarbage() {
        var rng = SystemRandomNumberGenerator()
        for target in FuzzTargets.names {
            for n in [0, 1, 8, 9, 64, 1000] {
                FuzzTargets.run(target, (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) })
            }
        }
    }
}
