import Dispatch

/// Runs CPU work that grows with a request's size (template rendering, tokenisation) on
/// Dispatch's threads instead of Swift's cooperative pool, so a huge request cannot keep
/// the pool's few threads (one per core) from answering everyone else, `/health` included.
enum Offload {
    static let queue = DispatchQueue(label: "qwen-serve.offload", qos: .userInitiated, attributes: .concurrent)

    static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            queue.async { c.resume(with: Result { try work() }) }
        }
    }
}
