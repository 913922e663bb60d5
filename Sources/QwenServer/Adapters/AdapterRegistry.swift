import Foundation
import QwenFormats
import QwenModel

/// The LoRA adapters being served, by name. Loading reads the files off the request
/// threads and then swaps the name in at once; unloading removes the name at once (new
/// requests for it get 404) and then waits until no running sequence holds the adapter.
public final class AdapterRegistry: @unchecked Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let adapter: LoRAAdapter
        /// "startup" (flags and config file, which SIGHUP re-reads) or "api".
        public let origin: String
        public let created: Int
    }

    public struct RegistryError: Error, CustomStringConvertible {
        public let description: String
    }

    let config: QwenConfig
    let baseName: String
    /// Loads register here, so shutdown waits for them.
    public let background: BackgroundWork
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]

    public init(config: QwenConfig, baseName: String, background: BackgroundWork = BackgroundWork()) {
        self.config = config
        self.baseName = baseName
        self.background = background
    }

    /// What a name may look like: it goes into URLs and metric labels.
    public static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 128
            && name.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-:@+".unicodeScalars.contains($0) }
    }

    public func get(_ name: String) -> Entry? {
        lock.lock()
        defer { lock.unlock() }
        return entries[name]
    }

    public var all: [Entry] {
        lock.lock()
        defer { lock.unlock() }
        return entries.values.sorted { $0.name < $1.name }
    }

    /// How long a load may take before its caller gets an error.
    public var loadTimeout: Double = 120

    /// Reads and checks the adapter (throws ModelFileError naming the file), then serves it
    /// under `name`, replacing an adapter of that name in one step.
    @discardableResult
    public func load(name: String, path: String, origin: String = "api") async throws -> Entry {
        guard Self.validName(name) else {
            throw RegistryError(description: "adapter name '\(name)' must be 1–128 characters of letters, digits and . _ - : @ +")
        }
        guard name != baseName else { throw RegistryError(description: "'\(name)' is the base model's name") }
        let config = self.config
        // Reading files can block (slow disks, network mounts): a thread of its own keeps that
        // away from the few threads that serve requests, and the caller waits at most
        // `loadTimeout` (a read stuck in the kernel cannot be interrupted; its thread is
        // abandoned and whatever it returns is dropped).
        let timeout = loadTimeout
        let adapter = try await background.run("load adapter \(name)") {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<LoRAAdapter, Error>) in
                let once = ResumeOnce(cont)
                Thread.detachNewThread { once.resume(with: Result { try LoRAAdapter.load(path: path, config: config) }) }
                DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                    once.resume(with: .failure(ModelFileError(path, "reading the adapter took longer than \(Int(timeout)) s; gave up")))
                }
            }
        }
        let entry = Entry(name: name, adapter: adapter, origin: origin, created: Int(Date().timeIntervalSince1970))
        lock.withLock { entries[name] = entry }
        return entry
    }

    /// Stops serving `name` and waits (up to `timeout` seconds) until every sequence that
    /// uses it has ended. Returns nil when no such adapter is loaded, else whether it drained.
    public func unload(name: String, timeout: Double = 600) async -> Bool? {
        guard let held = remove(name) else { return nil }
        let deadline = Date().addingTimeInterval(timeout)
        while held.adapter != nil {
            if Date() > deadline { return false }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return true
    }

    private final class WeakAdapter {
        weak var adapter: LoRAAdapter?
        init(_ a: LoRAAdapter) { adapter = a }
    }

    private func remove(_ name: String) -> WeakAdapter? {
        lock.lock()
        defer { lock.unlock() }
        return entries.removeValue(forKey: name).map { WeakAdapter($0.adapter) }
    }

    /// Makes the startup adapters exactly `wanted` (name → path): loads or reloads each,
    /// and unloads startup adapters no longer listed. Adapters loaded over the API stay.
    public func reconcileStartup(_ wanted: [(String, String)]) async -> [String] {
        var problems: [String] = []
        for (name, path) in wanted {
            do { try await load(name: name, path: path, origin: "startup") } catch { problems.append("adapter \(name): \(error)") }
        }
        let keep = Set(wanted.map(\.0))
        for e in all where e.origin == "startup" && !keep.contains(e.name) { _ = remove(e.name) }
        return problems
    }
}

/// A continuation resumed by whichever of two racers comes first.
final class ResumeOnce<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var cont: CheckedContinuation<T, Error>?
    init(_ c: CheckedContinuation<T, Error>) { cont = c }
    /// Returns whether this call was the one that resumed it.
    @discardableResult
    func resume(with r: Result<T, Error>) -> Bool {
        let c: CheckedContinuation<T, Error>? = lock.withLock {
            defer { cont = nil }
            return cont
        }
        c?.resume(with: r)
        return c != nil
    }
}
