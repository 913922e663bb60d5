import Foundation
import QwenServer
import XCTest

/// The shutdown path's registry of background work.
final class BackgroundWorkTests: XCTestCase {
    func testDrainWaitsForRunningWorkThenRefusesNewWork() async throws {
        let work = BackgroundWork()
        let started = expectation(description: "started")
        let ended = Flag()
        let job = Task {
            try await work.run("slow job") {
                started.fulfill()
                try await Task.sleep(nanoseconds: 300_000_000)
                ended.set()
                return 42
            }
        }
        await fulfillment(of: [started], timeout: 5)
        XCTAssertEqual(work.active, ["slow job"])
        let left = await work.drain(timeout: 10)
        XCTAssertEqual(left, [])
        XCTAssertTrue(ended.value, "drain returned before the job ended")
        let result = try await job.value
        XCTAssertEqual(result, 42)
        do {
            _ = try await work.run("late") { 1 }
            XCTFail("work started after the drain began")
        } catch is BackgroundWork.StoppingError {}
    }

    func testDrainGivesUpAfterTheGracePeriod() async throws {
        let work = BackgroundWork()
        let started = expectation(description: "started")
        let job = Task {
            try await work.run("stuck") {
                started.fulfill()
                try await Task.sleep(nanoseconds: 5_000_000_000)
            }
        }
        await fulfillment(of: [started], timeout: 5)
        let left = await work.drain(timeout: 0.2)
        XCTAssertEqual(left, ["stuck"])
        job.cancel()
    }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var v = false
    func set() { lock.withLock { v = true } }
    var value: Bool { lock.withLock { v } }
}
