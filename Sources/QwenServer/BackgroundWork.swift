import Foundation

/// The one place shutdown waits for background work (adapter loads today, fine-tuning jobs
/// later): work registers while it runs, new work is refused once stopping has begun, and
/// the drain waits — up to the grace period — for what is still running.
public final class BackgroundWork: @unchecked Sendable {
    public struct StoppingError: Error, CustomStringConvertible {
        public var description: String { "the server is shutting down" }
    }

    private let lock = NSLock()
    private var running: [UUID: String] = [:]
    private var stopping = false

    public init() {}

    /// Runs `body` as registered work named `name`; throws StoppingError once shutdown began.
    public func run<T: Sendable>(_ name: String, _ body: @Sendable () async throws -> T) async throws -> T {
        let id = UUID()
        let admitted: Bool = lock.withLock {
            guard !stopping else { return false }
            running[id] = name
            return true
        }
        guard admitted else { throw StoppingError() }
        defer { lock.withLock { _ = running.removeValue(forKey: id) } }
        return try await body()
    }

    /// What is running now, by name.
    public var active: [String] { lock.withLock { running.values.sorted() } }

    /// Refuses new work and waits up to `timeout` seconds for running work; returns what is left.
    public func drain(timeout: Double) async -> [String] {
        lock.withLock { stopping = true }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if active.isEmpty { return [] }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return active
    }
}
