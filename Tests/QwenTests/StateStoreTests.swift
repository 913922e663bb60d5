import Foundation
import Logging
import QwenServer
import XCTest

/// The fine-tuning store's contract, on both backends: SQLite in a temporary directory and
/// PostgreSQL (a new database on the cluster scripts/with_postgres.sh started; `make test` runs
/// these inside it). No model: jobs, claims, leases, fencing, checkpoints and models alone.
final class StateStoreTests: XCTestCase {
    static let postgres = ProcessInfo.processInfo.environment["QWEN_TEST_POSTGRES"]

    func temporaryDirectory() throws -> String {
        let d = NSTemporaryDirectory() + "qwen-store-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// A new empty database's URL.
    func freshDatabase() throws -> String {
        guard let url = Self.postgres else { throw XCTSkip("no PostgreSQL (run through scripts/with_postgres.sh, as make test does)") }
        let name = "store_\(UInt32.random(in: 0...UInt32.max))_\(getpid())"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["psql", String(url.split(separator: "?")[0]), "-qc", "CREATE DATABASE \(name)"]
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "psql could not create a database")
        let parts = url.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let base = parts[0]
        return base[..<base.lastIndex(of: "/")!] + "/" + name + (parts.count > 1 ? "?" + parts[1] : "")
    }

    func postgresStore(_ url: String) async throws -> PostgresFineTuningStore {
        var logger = Logger(label: "test.postgres")
        logger.logLevel = .critical
        let s = PostgresFineTuningStore(configuration: try PostgresURL.configuration(url, passwordFile: nil),
                                        cacheDirectory: try temporaryDirectory(), timeout: 20, logger: logger)
        try await s.migrate()
        addTeardownBlock { s.close() }
        return s
    }

    /// Runs `body` on each backend (each with a fresh store); `make` gives further handles on the same state.
    func onBothBackends(_ body: (String, any FineTuningStore, () async throws -> any FineTuningStore) async throws -> Void) async throws {
        let dir = try temporaryDirectory()
        let sqlite = try SQLiteFineTuningStore(directory: dir)
        try await body("sqlite", sqlite) { try SQLiteFineTuningStore(directory: dir) }
        guard Self.postgres != nil else {
            print("StateStoreTests: PostgreSQL half skipped (no QWEN_TEST_POSTGRES; make test starts one)")
            return
        }
        let url = try freshDatabase()
        let pg = try await postgresStore(url)
        try await body("postgres", pg) { try await self.postgresStore(url) }
    }

    static func job(_ id: String) -> FineTuningJob {
        FineTuningJob(id: id, created_at: 1, hyperparameters: .init(batch_size: 1, learning_rate_multiplier: 1, n_epochs: 1), model: "m",
                      seed: 1, status: .queued, training_file: "file-x", validation_file: nil, metadata: nil, suffix: nil,
                      lora: .init(rank: 2, scale: 20, dropout: 0, target_modules: ["q_proj"], num_layers: -1, max_seq_length: 64,
                                  learning_rate: 1e-4, checkpoint_every: 1))
    }

    static func event(_ job: String, _ message: String, step: Int? = nil) -> JobEvent {
        JobEvent(id: "ftevent-\(UUID().uuidString.prefix(12))", job_id: job, created_at: 1, level: "info", message: message,
                 type: step == nil ? "message" : "metrics", data: nil, step: step)
    }

    func assertFenced(_ what: String, _ op: () async throws -> Void, file: StaticString = #filePath, line: UInt = #line) async {
        do {
            try await op()
            XCTFail("\(what) was not refused", file: file, line: line)
        } catch let e as StoreError {
            if case .fenced = e {} else { XCTFail("\(what): \(e)", file: file, line: line) }
        } catch { XCTFail("\(what): \(error)", file: file, line: line) }
    }

    func testFilesKeepTheirBytesAndPageInUploadOrder() async throws {
        try await onBothBackends { name, store, _ in
            let dir = try temporaryDirectory()
            var ids: [String] = []
            for i in 0..<5 {
                let bytes = Data((0..<(i * 700_000 + 3)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) })
                let path = dir + "/up\(i)"
                try bytes.write(to: URL(fileURLWithPath: path))
                let id = "file-\(name)\(i)" + String(repeating: "a", count: 24 - name.count - 1)
                try await store.insertFile(FileObject(id: id, bytes: bytes.count, created_at: 1, filename: "f\(i)", purpose: i % 2 == 0 ? "fine-tune" : "batch",
                                                      status: "processed"), content: path)
                XCTAssertFalse(FileManager.default.fileExists(atPath: path), "\(name): the store takes the upload")
                let path2 = try await store.fileContent(id)
                XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path2)), bytes, name)
                ids.append(id)
            }
            let desc = try await store.files(purpose: nil, after: nil, limit: 2, ascending: false)
            XCTAssertEqual(desc.items.map(\.id), [ids[4], ids[3]], name)
            XCTAssertTrue(desc.more)
            let next = try await store.files(purpose: nil, after: ids[3], limit: 10, ascending: false)
            XCTAssertEqual(next.items.map(\.id), [ids[2], ids[1], ids[0]], name)
            XCTAssertFalse(next.more)
            let tuning = try await store.files(purpose: "fine-tune", after: ids[0], limit: 10, ascending: true)
            XCTAssertEqual(tuning.items.map(\.id), [ids[2], ids[4]], name)
            let deleted = try await store.deleteFile(ids[1])
            XCTAssertTrue(deleted, name)
            let again = try await store.deleteFile(ids[1])
            XCTAssertFalse(again, name)
            let gone = try await store.file(ids[1])
            XCTAssertNil(gone, name)
        }
    }

    /// A replica paused inside a transaction must not hold its row locks (and so its job, past
    /// SKIP LOCKED claims) for as long as its connection lives: the store's sessions have
    /// PostgreSQL end an idle transaction after a few seconds.
    func testTheStoresSessionsEndATransactionLeftIdle() async throws {
        let store = try await postgresStore(try freshDatabase())
        let value = try await store.setting("idle_in_transaction_session_timeout")
        XCTAssertEqual(value, "5s")
    }

    func testAClaimIsExclusiveAndALapsedOneIsFencedOut() async throws {
        try await onBothBackends { name, store, _ in
            for i in 1...3 { try await store.insert(Self.job("ftjob-\(i)"), events: [Self.event("ftjob-\(i)", "created")]) }
            let a = try await store.claim(node: "a", lease: 0.6, takeOver: false)
            let b = try await store.claim(node: "b", lease: 30, takeOver: false)
            XCTAssertEqual(a?.job.id, "ftjob-1", name)
            XCTAssertEqual(b?.job.id, "ftjob-2", name)
            let running = try await store.job("ftjob-1")
            XCTAssertEqual(running?.status, .running, name)
            try await Task.sleep(for: .seconds(1))
            // a's lease ran out: the oldest claimable job is ftjob-1 again, under a new epoch.
            let c = try await store.claim(node: "c", lease: 30, takeOver: false)
            XCTAssertEqual(c?.job.id, "ftjob-1", name)
            XCTAssertEqual(c?.previousNode, "a", name)
            XCTAssertEqual(c?.epoch, a!.epoch + 1, name)
            var stale = a!.job
            stale.step = 99
            await assertFenced("\(name) renew") { _ = try await store.renew(a!, lease: 30) }
            await assertFenced("\(name) update") { try await store.update(a!, stale, events: [Self.event("ftjob-1", "stale")]) }
            await assertFenced("\(name) checkpoint") {
                try await store.saveCheckpoint(a!, step: 99, runFiles: ["s": Data([1])], checkpoint: nil, adapter: [:], events: [])
            }
            await assertFenced("\(name) finish") { try await store.finish(a!, stale, resultFile: nil, model: "ft:x", adapter: ["a": Data([1])], events: []) }
            await assertFenced("\(name) release") { try await store.release(a!, stale, events: []) }
            let afterStale = try await store.job("ftjob-1")
            XCTAssertNotEqual(afterStale?.step, 99, name)
            let msgs = try await store.events(job: "ftjob-1", after: nil, limit: 100).items.map(\.message)
            XCTAssertFalse(msgs.contains("stale"), name)
            let models = try await store.models()
            XCTAssertTrue(models.isEmpty, name)
            let runState = try await store.runState(job: "ftjob-1")
            XCTAssertNil(runState, name)
            // The new holder writes; a restarted node takes its own running job back at once.
            _ = try await store.renew(c!, lease: 30)
            let none = try await store.claim(node: "b", lease: 30, takeOver: false)
            XCTAssertEqual(none?.job.id, "ftjob-3", name)
            let own = try await store.claim(node: "b", lease: 30, takeOver: true)
            XCTAssertEqual(own?.job.id, "ftjob-2", name)
            XCTAssertEqual(own?.previousNode, "b", name)
        }
    }

    func testPauseAndCancelReachTheRunnerOrEndAJobNobodyRuns() async throws {
        try await onBothBackends { name, store, _ in
            try await store.insert(Self.job("ftjob-1"), events: [])
            try await store.insert(Self.job("ftjob-2"), events: [])
            let a = try await store.claim(node: "a", lease: 0.5, takeOver: false)!
            // A queued job stops at once; a running one is asked.
            let paused = try await store.transition("ftjob-2", from: [.queued], event: "paused") { $0.status = .paused }
            XCTAssertEqual(paused?.status, .paused, name)
            let notQueued = try await store.transition("ftjob-1", from: [.queued], event: "no") { $0.status = .paused }
            XCTAssertEqual(notQueued?.status, .running, name)
            try await store.request(.cancel, job: "ftjob-1")
            let asked = try await store.renew(a, lease: 0.5)
            XCTAssertEqual(asked, .cancel, name)
            // The runner dies before acting: whoever claims next ends the job instead of running it.
            try await Task.sleep(for: .seconds(0.8))
            let next = try await store.claim(node: "b", lease: 30, takeOver: false)
            XCTAssertNil(next, name)
            let ended = try await store.job("ftjob-1")
            XCTAssertEqual(ended?.status, .cancelled, name)
            XCTAssertNotNil(ended?.finished_at, name)
        }
    }

    func testCheckpointsRunStateAndModelsAndAResumeDropsLaterReports() async throws {
        try await onBothBackends { name, store, _ in
            try await store.insert(Self.job("ftjob-1"), events: [])
            let a = try await store.claim(node: "a", lease: 0.6, takeOver: false)!
            for step in [4, 8] {
                let ck = JobCheckpoint(id: "ftckpt-\(step)", fine_tuning_job_id: "ftjob-1", created_at: step, step_number: step, metrics: "{}",
                                       fine_tuned_model_checkpoint: "ft:m:ftjob-1:ckpt-step-\(step)")
                try await store.saveCheckpoint(a, step: step, runFiles: ["training_state.json": Data("\(step)".utf8), "ck": Data(repeating: UInt8(step), count: 3000)],
                                               checkpoint: ck, adapter: ["adapters.safetensors": Data([UInt8(step)]), "adapter_config.json": Data("{}".utf8)],
                                               events: [Self.event("ftjob-1", "step \(step)", step: step)])
            }
            for step in 9...10 { try await store.update(a, a.job, events: [Self.event("ftjob-1", "step \(step)", step: step)]) }
            let state = try await store.runState(job: "ftjob-1")
            XCTAssertEqual(state?.step, 8, name)
            XCTAssertEqual(state?.files["training_state.json"], Data("8".utf8), name)
            XCTAssertEqual(state?.files.count, 2, name)
            let cps = try await store.checkpoints(job: "ftjob-1", after: nil, limit: 1)
            XCTAssertEqual(cps.items.map(\.step_number), [8], name)
            XCTAssertTrue(cps.more, name)
            let models = try await store.models()
            XCTAssertEqual(models.map(\.name).sorted(), ["ft:m:ftjob-1:ckpt-step-4", "ft:m:ftjob-1:ckpt-step-8"], name)
            let files = try await store.modelFiles("ft:m:ftjob-1:ckpt-step-8")
            XCTAssertEqual(files?["adapters.safetensors"], Data([8]), name)
            XCTAssertEqual(AdapterDigest.of(files ?? [:]), models.first { $0.step == 8 }?.digest, name)
            // Taken over after the lease: steps 9 and 10 run again, so their reports go.
            try await Task.sleep(for: .seconds(1))
            let b = try await store.claim(node: "b", lease: 30, takeOver: false)!
            let steps = try await store.events(job: "ftjob-1", after: nil, limit: 100).items.compactMap(\.step)
            XCTAssertEqual(steps, [8, 4], name)
            var done = b.job
            done.status = .succeeded
            done.fine_tuned_model = "ft:m:ftjob-1"
            done.result_files = ["file-results000000000000000"]
            let csv = Data("step,loss\n1,2\n".utf8)
            try await store.finish(b, done, resultFile: (FileObject(id: "file-results000000000000000", bytes: csv.count, created_at: 1, filename: "m.csv",
                                                                    purpose: "fine-tune-results", status: "processed"), csv),
                                   model: "ft:m:ftjob-1", adapter: ["adapters.safetensors": Data([9])], events: [Self.event("ftjob-1", "done")])
            let finished = try await store.job("ftjob-1")
            XCTAssertEqual(finished?.status, .succeeded, name)
            let cleared = try await store.runState(job: "ftjob-1")
            XCTAssertNil(cleared, name)
            let results = try await store.fileContent("file-results000000000000000")
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: results)), csv, name)
            let all = try await store.models().map(\.name)
            XCTAssertTrue(all.contains("ft:m:ftjob-1"), name)
            let deleted = try await store.deleteModel("ft:m:ftjob-1:ckpt-step-4")
            XCTAssertTrue(deleted, name)
            let again = try await store.deleteModel("ft:m:ftjob-1:ckpt-step-4")
            XCTAssertFalse(again, name)
            let left = try await store.checkpoints(job: "ftjob-1", after: nil, limit: 10).items.map(\.step_number)
            XCTAssertEqual(left, [8], name)
            await assertFenced("\(name) a finished job's holder") { _ = try await store.renew(b, lease: 30) }
        }
    }

    func testConcurrentRunnersClaimEachJobExactlyOnce() async throws {
        try await onBothBackends { name, store, make in
            let n = 40
            for i in 0..<n { try await store.insert(Self.job("ftjob-\(i)"), events: []) }
            var runners: [any FineTuningStore] = []
            for _ in 0..<6 { runners.append(try await make()) }
            let claimed = try await withThrowingTaskGroup(of: [String].self) { group in
                for (r, s) in runners.enumerated() {
                    group.addTask {
                        var mine: [String] = []
                        while let c = try await s.claim(node: "n\(r)", lease: 60, takeOver: false) {
                            mine.append(c.job.id)
                            var j = c.job
                            j.status = .succeeded
                            try await s.update(c, j, events: [Self.event(j.id, "done by n\(r)")])
                        }
                        return mine
                    }
                }
                var all: [String] = []
                for try await m in group { all += m }
                return all
            }
            XCTAssertEqual(claimed.count, n, "\(name): \(claimed.count) claims for \(n) jobs")
            XCTAssertEqual(Set(claimed).count, n, name)
            let left = try await store.jobs(status: [.queued, .running])
            XCTAssertTrue(left.isEmpty, name)
        }
    }
}
