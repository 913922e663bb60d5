import Foundation

/// Store changes fanned out to this process's subscribers: the SQLite store's own writes, or what
/// PostgreSQL's NOTIFY brought.
final class ChangeFeed: @unchecked Sendable {
    private let lock = NSLock()
    private var subscribers: [UUID: AsyncStream<StoreChange>.Continuation] = [:]

    func subscribe() -> AsyncStream<StoreChange> {
        let (stream, cont) = AsyncStream<StoreChange>.makeStream(bufferingPolicy: .bufferingNewest(16))
        let id = UUID()
        lock.withLock { subscribers[id] = cont }
        cont.onTermination = { [weak self] _ in self?.lock.withLock { _ = self?.subscribers.removeValue(forKey: id) } }
        return stream
    }

    func send(_ c: StoreChange) {
        for s in lock.withLock({ Array(subscribers.values) }) { s.yield(c) }
    }
}
