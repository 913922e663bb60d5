import Foundation
import QwenFormats
import Logging

/// Serves every fine-tuned model the store holds, on this replica: at start, whenever the store
/// announces a change (NOTIFY on PostgreSQL) and every few seconds besides. Adapter files are
/// cached under `<state-dir>/cache/adapters/<digest>/` and checked against their digest before
/// each load; models gone from the store are unloaded.
public actor FineTunedModels {
    let store: any FineTuningStore
    let adapters: AdapterRegistry
    let cacheDirectory: String
    let logger = Logger(label: "qwen-serve.fine-tuning")
    /// What this replica serves: name → digest.
    private var served: [String: String] = [:]
    private var task: Task<Void, Never>?

    public init(store: any FineTuningStore, adapters: AdapterRegistry, cacheDirectory: String) {
        self.store = store
        self.adapters = adapters
        self.cacheDirectory = cacheDirectory
    }

    /// Keeps this replica in step with the store until stopped.
    public func start(poll: Double = 5) {
        let changes = store.changes()
        task = Task { [weak self] in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await c in changes where c == .models { _ = await self?.refresh() }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(poll))
                        _ = await self?.refresh()
                    }
                }
            }
        }
    }

    public func stop() { task?.cancel() }

    /// Loads what is new, unloads what is gone; returns the problems (also logged).
    @discardableResult
    public func refresh() async -> [String] {
        let list: [StoredModel]
        do { list = try await store.models() } catch { return ["fine-tuned models: \(error)"] }
        var problems: [String] = []
        for m in list where served[m.name] != m.digest || adapters.get(m.name) == nil {
            do {
                guard let files = try await store.modelFiles(m.name) else { continue }  // deleted meanwhile
                guard AdapterDigest.of(files) == m.digest else { throw StoreError.corrupt("the files of \(m.name) do not match their digest") }
                try await load(name: m.name, files: files, digest: m.digest)
            } catch {
                problems.append("\(m.name): \(error)")
                logger.error("fine-tuned model \(m.name) cannot be served here: \(error)")
            }
        }
        let names = Set(list.map(\.name))
        for e in adapters.all where e.origin == "fine-tune" && !names.contains(e.name) { forget(e.name) }
        return problems
    }

    /// Serves `files` under `name` at once (a job that just finished here).
    public func install(name: String, files: [String: Data]) async throws {
        try await load(name: name, files: files, digest: AdapterDigest.of(files))
    }

    /// Stops serving `name` here (requests holding it finish first).
    public func forget(_ name: String) {
        served[name] = nil
        let adapters = self.adapters
        Task { _ = await adapters.unload(name: name) }
    }

    private func load(name: String, files: [String: Data], digest: String) async throws {
        let dir = try cached(files, digest: digest)
        try await adapters.load(name: name, path: dir, origin: "fine-tune")
        served[name] = digest
    }

    /// The cache directory of these files: reused when what is there has the digest, else
    /// written under a temporary name and renamed into place.
    func cached(_ files: [String: Data], digest: String) throws -> String {
        let fm = FileManager.default
        let dir = cacheDirectory + "/" + digest
        if fm.fileExists(atPath: dir) {
            var there: [String: Data] = [:]
            for f in files.keys { there[f] = try? SafeFile.read(dir + "/" + f, maxBytes: 1 << 34) }
            if there.count == files.count, AdapterDigest.of(there) == digest { return dir }
            try? fm.removeItem(atPath: dir)
        }
        try fm.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        let tmp = dir + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        do {
            for (f, d) in files {
                guard !f.contains("/"), !f.hasPrefix(".") else { throw StoreError.corrupt("adapter file name \(f)") }
                try AtomicFile.write(d, to: tmp + "/" + f)
            }
            if rename(tmp, dir) != 0 {
                // Another load put the same digest in place first.
                try? fm.removeItem(atPath: tmp)
                guard fm.fileExists(atPath: dir) else { throw StoreError.corrupt("cannot rename \(tmp) into place") }
            }
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
        return dir
    }
}
