import Foundation
import QwenEngine

/// Background responses running in this process, by id, so a cancel can reach them.
final class BackgroundResponses: @unchecked Sendable {
    private let lock = NSLock()
    private var running: [String: Engine.Stream] = [:]
    private var cancelled: Set<String> = []

    init() {}

    func register(_ id: String, _ stream: Engine.Stream) { lock.withLock { running[id] = stream } }
    func remove(_ id: String) { lock.withLock { _ = running.removeValue(forKey: id); cancelled.remove(id) } }
    func isCancelled(_ id: String) -> Bool { lock.withLock { cancelled.contains(id) } }
    var ids: [String] { lock.withLock { Array(running.keys) } }

    /// Every second while responses run here: renews their hold in the store and cancels those
    /// whose cancel was asked through another replica.
    func keepHeld(in store: ResponseStore) {
        Task.detached { [weak self] in
            while let self {
                let ids = self.ids
                if !ids.isEmpty, let asked = try? await store.heartbeat(ids) {
                    for id in asked { _ = self.cancel(id) }
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Cancels a running response; false if it is not running here.
    func cancel(_ id: String) -> Bool {
        let stream: Engine.Stream? = lock.withLock {
            guard let s = running[id] else { return nil }
            cancelled.insert(id)
            return s
        }
        stream?.cancel()
        return stream != nil
    }
}
