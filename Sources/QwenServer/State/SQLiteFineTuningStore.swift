import Foundation
import QwenFormats
import GRDB

/// The store for one machine: SQLite under the state directory (GRDB, WAL), uploaded files'
/// bytes beside it in `files/`. Every change is one transaction, so a crash leaves the state as
/// of the last committed change. Schema v1 is what earlier versions wrote; v2 adds leases,
/// run state and models, and brings an older directory's adapters into the database.
public final class SQLiteFineTuningStore: FineTuningStore, @unchecked Sendable {
    let db: DatabaseQueue
    public let directory: String
    public let backend = "sqlite"
    private let feed = ChangeFeed()

    public init(directory: String) throws {
        self.directory = directory
        db = try StateDatabase.open(directory: directory, file: "state.sqlite")
        try FileManager.default.createDirectory(atPath: (directory as NSString).appendingPathComponent("files"), withIntermediateDirectories: true)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE files (id TEXT PRIMARY KEY NOT NULL, object TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
                    filename TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL, status_details TEXT, lines INTEGER, max_tokens INTEGER);
                CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, body TEXT NOT NULL);
                CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, object TEXT NOT NULL, job_id TEXT NOT NULL,
                    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
                CREATE INDEX events_on_job_id ON events(job_id);
                CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, object TEXT NOT NULL,
                    fine_tuning_job_id TEXT NOT NULL, created_at INTEGER NOT NULL, step_number INTEGER NOT NULL, metrics TEXT NOT NULL,
                    fine_tuned_model_checkpoint TEXT NOT NULL, path TEXT NOT NULL);
                CREATE INDEX checkpoints_on_fine_tuning_job_id ON checkpoints(fine_tuning_job_id);
                """)
        }
        migrator.registerMigration("v2") { [directory] db in
            try db.execute(sql: """
                ALTER TABLE jobs ADD COLUMN owner TEXT;
                ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE jobs ADD COLUMN lease_until REAL;
                ALTER TABLE jobs ADD COLUMN requested TEXT;
                ALTER TABLE events ADD COLUMN step INTEGER;
                CREATE TABLE run_files (job_id TEXT NOT NULL, name TEXT NOT NULL, step INTEGER NOT NULL, bytes BLOB NOT NULL,
                    PRIMARY KEY (job_id, name));
                CREATE TABLE models (name TEXT PRIMARY KEY NOT NULL, job_id TEXT NOT NULL, step INTEGER, digest TEXT NOT NULL,
                    created_at INTEGER NOT NULL);
                CREATE TABLE model_files (name TEXT NOT NULL, file TEXT NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (name, file));
                """)
            try Self.importAdapters(db, directory: directory)
        }
        try migrator.migrate(db)
    }

    /// v1 kept adapters only as directories under jobs/: each finished job's and each
    /// checkpoint's become models (a directory already deleted stays deleted).
    static func importAdapters(_ db: Database, directory: String) throws {
        func files(_ dir: String) -> [String: Data]? {
            var out: [String: Data] = [:]
            for f in ["adapter_config.json", "adapters.safetensors"] {
                guard let d = try? SafeFile.read(dir + "/" + f, maxBytes: 1 << 34) else { return nil }
                out[f] = d
            }
            return out
        }
        let now = Int(Date().timeIntervalSince1970)
        for row in try Row.fetchAll(db, sql: "SELECT id, body FROM jobs WHERE status = 'succeeded'") {
            let job = try SQLiteFineTuningStore.decode(row["body"])
            guard let name = job.fine_tuned_model, let f = files(directory + "/jobs/\(job.id)/run") else { continue }
            try putModel(db, StoredModel(name: name, job: job.id, step: nil, digest: AdapterDigest.of(f), created_at: job.finished_at ?? now), files: f)
        }
        for row in try Row.fetchAll(db, sql: "SELECT fine_tuning_job_id, step_number, fine_tuned_model_checkpoint, path, created_at FROM checkpoints") {
            guard let f = files(row["path"]) else { continue }
            try putModel(db, StoredModel(name: row["fine_tuned_model_checkpoint"], job: row["fine_tuning_job_id"], step: row["step_number"],
                                         digest: AdapterDigest.of(f), created_at: row["created_at"]), files: f)
        }
    }

    public func changes() -> AsyncStream<StoreChange> { feed.subscribe() }

    static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: Files

    func filePath(_ id: String) -> String { (directory as NSString).appendingPathComponent("files/\(id)") }

    public func insertFile(_ f: FileObject, content: String) async throws {
        guard rename(content, filePath(f.id)) == 0 else { throw StoreError.unavailable("cannot move \(content) into \(directory)/files") }
        do {
            try await db.write { db in try Self.insertFileRow(db, f) }
        } catch {
            try? FileManager.default.removeItem(atPath: filePath(f.id))
            throw error
        }
    }

    static func insertFileRow(_ db: Database, _ f: FileObject) throws {
        try db.execute(sql: """
            INSERT INTO files (id, object, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [f.id, f.object, f.bytes, f.created_at, f.filename, f.purpose, f.status, f.status_details, f.lines, f.max_tokens])
    }

    static func fileObject(_ r: Row) -> FileObject {
        FileObject(id: r["id"], bytes: r["bytes"], created_at: r["created_at"], filename: r["filename"], purpose: r["purpose"],
                   status: r["status"], status_details: r["status_details"], lines: r["lines"], max_tokens: r["max_tokens"])
    }

    public func file(_ id: String) async throws -> FileObject? {
        try await db.read { db in try Row.fetchOne(db, sql: "SELECT * FROM files WHERE id = ?", arguments: [id]).map(Self.fileObject) }
    }

    public func files(purpose: String?, after: String?, limit: Int, ascending: Bool) async throws -> (items: [FileObject], more: Bool) {
        try await db.read { db in
            // In upload order (rowid): created_at has only one-second resolution.
            var sql = "SELECT * FROM files WHERE 1", args: [DatabaseValueConvertible?] = []
            if let purpose { sql += " AND purpose = ?"; args.append(purpose) }
            if let after, let cursor = try Int64.fetchOne(db, sql: "SELECT rowid FROM files WHERE id = ?", arguments: [after]) {
                sql += ascending ? " AND rowid > ?" : " AND rowid < ?"
                args.append(cursor)
            }
            sql += " ORDER BY rowid \(ascending ? "ASC" : "DESC") LIMIT ?"
            args.append(limit + 1)
            let rows = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Self.fileObject)
            return (Array(rows.prefix(limit)), rows.count > limit)
        }
    }

    public func deleteFile(_ id: String) async throws -> Bool {
        let gone = try await db.write { db in
            try db.execute(sql: "DELETE FROM files WHERE id = ?", arguments: [id])
            return db.changesCount > 0
        }
        try? FileManager.default.removeItem(atPath: filePath(id))
        return gone
    }

    public func fileContent(_ id: String) async throws -> String {
        let path = filePath(id)
        guard FileManager.default.fileExists(atPath: path) else { throw StoreError.corrupt("the bytes of \(id) are missing from \(directory)/files") }
        return path
    }

    // MARK: Jobs

    static func encode(_ job: FineTuningJob) throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try enc.encode(job), as: UTF8.self)
    }

    static func decode(_ s: String) throws -> FineTuningJob { try JSONDecoder().decode(FineTuningJob.self, from: Data(s.utf8)) }

    static func insertEvents(_ db: Database, _ events: [JobEvent]) throws {
        for e in events {
            try db.execute(sql: "INSERT INTO events (id, object, job_id, created_at, level, message, type, data, step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           arguments: [e.id, e.object, e.job_id, e.created_at, e.level, e.message, e.type, e.data, e.step])
        }
    }

    public func insert(_ job: FineTuningJob, events: [JobEvent]) async throws {
        try await db.write { db in
            try db.execute(sql: "INSERT INTO jobs (id, status, body) VALUES (?, ?, ?)", arguments: [job.id, job.status.rawValue, try Self.encode(job)])
            try Self.insertEvents(db, events)
        }
        feed.send(.jobs)
    }

    public func job(_ id: String) async throws -> FineTuningJob? {
        try await db.read { db in try String.fetchOne(db, sql: "SELECT body FROM jobs WHERE id = ?", arguments: [id]) }.map(Self.decode)
    }

    public func jobs(after: String?, limit: Int) async throws -> (items: [FineTuningJob], more: Bool) {
        let rows: [String] = try await db.read { db in
            if let after, let s = try Int64.fetchOne(db, sql: "SELECT seq FROM jobs WHERE id = ?", arguments: [after]) {
                return try String.fetchAll(db, sql: "SELECT body FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", arguments: [s, limit + 1])
            }
            return try String.fetchAll(db, sql: "SELECT body FROM jobs ORDER BY seq DESC LIMIT ?", arguments: [limit + 1])
        }
        return (try rows.prefix(limit).map(Self.decode), rows.count > limit)
    }

    public func jobs(status: Set<JobStatus>) async throws -> [FineTuningJob] {
        let list = status.map { "'\($0.rawValue)'" }.joined(separator: ",")
        return try await db.read { db in try String.fetchAll(db, sql: "SELECT body FROM jobs WHERE status IN (\(list)) ORDER BY seq") }
            .map(Self.decode)
    }

    public func transition(_ id: String, from: Set<JobStatus>, event: String?,
                           _ change: @escaping @Sendable (inout FineTuningJob) -> Void) async throws -> FineTuningJob? {
        let out: FineTuningJob? = try await db.write { db in
            guard let body = try String.fetchOne(db, sql: "SELECT body FROM jobs WHERE id = ?", arguments: [id]) else { return nil }
            var job = try Self.decode(body)
            guard from.contains(job.status) else { return job }
            change(&job)
            try db.execute(sql: "UPDATE jobs SET status = ?, body = ?, requested = NULL WHERE id = ?",
                           arguments: [job.status.rawValue, try Self.encode(job), id])
            if let event { try Self.insertEvents(db, [JobEvents.make(id, event)]) }
            return job
        }
        feed.send(.jobs)
        return out
    }

    public func request(_ action: JobAction, job id: String) async throws {
        try await db.write { db in
            try db.execute(sql: "UPDATE jobs SET requested = ? WHERE id = ? AND status = 'running'", arguments: [action.rawValue, id])
        }
        feed.send(.jobs)
    }

    private func page(table: String, jobColumn: String, job: String, after: String?, limit: Int) async throws -> [Row] {
        try db.read { db in
            var sql = "SELECT * FROM \(table) WHERE \(jobColumn) = ?", args: [DatabaseValueConvertible?] = [job]
            if let after, let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM \(table) WHERE id = ?", arguments: [after]) {
                sql += " AND seq < ?"
                args.append(seq)
            }
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit + 1)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args))
        }
    }

    public func events(job: String, after: String?, limit: Int) async throws -> (items: [JobEvent], more: Bool) {
        let rows = try await page(table: "events", jobColumn: "job_id", job: job, after: after, limit: limit)
        let items = rows.prefix(limit).map { r in
            JobEvent(seq: r["seq"], id: r["id"], job_id: r["job_id"], created_at: r["created_at"], level: r["level"], message: r["message"],
                     type: r["type"], data: r["data"], step: r["step"])
        }
        return (items, rows.count > limit)
    }

    public func checkpoints(job: String, after: String?, limit: Int) async throws -> (items: [JobCheckpoint], more: Bool) {
        let rows = try await page(table: "checkpoints", jobColumn: "fine_tuning_job_id", job: job, after: after, limit: limit)
        let items = rows.prefix(limit).map { r in
            JobCheckpoint(seq: r["seq"], id: r["id"], fine_tuning_job_id: r["fine_tuning_job_id"], created_at: r["created_at"],
                          step_number: r["step_number"], metrics: r["metrics"], fine_tuned_model_checkpoint: r["fine_tuned_model_checkpoint"])
        }
        return (items, rows.count > limit)
    }

    // MARK: The runner

    public func claim(node: String, lease: Double, takeOver: Bool) async throws -> JobClaim? {
        let (claim, changed) = try await db.write { db -> (JobClaim?, Bool) in
            var changed = false
            let now = Self.now()
            while let r = try Row.fetchOne(db, sql: """
                SELECT id, body, owner, epoch, requested FROM jobs
                WHERE status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < ? OR (? AND owner = ?)))
                ORDER BY seq LIMIT 1
                """, arguments: [now, takeOver, node]) {
                var job = try Self.decode(r["body"])
                let id: String = r["id"]
                // Asked to stop while its runner was gone: done without running.
                if let asked = (r["requested"] as String?).flatMap(JobAction.init(rawValue:)) {
                    JobEvents.stopped(&job, by: asked)
                    try db.execute(sql: "UPDATE jobs SET status = ?, body = ?, owner = NULL, lease_until = NULL, requested = NULL, epoch = epoch + 1 WHERE id = ?",
                                   arguments: [job.status.rawValue, try Self.encode(job), id])
                    try Self.insertEvents(db, [JobEvents.make(id, asked == .cancel ? "Fine-tuning job cancelled" : "Fine-tuning job paused")])
                    changed = true
                    continue
                }
                let previous: String? = job.status == .running ? r["owner"] : nil
                let epoch: Int64 = r["epoch"] + 1
                job.status = .running
                let saved = try Int.fetchOne(db, sql: "SELECT MAX(step) FROM run_files WHERE job_id = ?", arguments: [id]) ?? 0
                // Steps past the last checkpoint run again: their reports are dropped, not repeated.
                try db.execute(sql: "DELETE FROM events WHERE job_id = ? AND type = 'metrics' AND step > ?", arguments: [id, saved])
                try db.execute(sql: "UPDATE jobs SET status = 'running', body = ?, owner = ?, epoch = ?, lease_until = ?, requested = NULL WHERE id = ?",
                               arguments: [try Self.encode(job), node, epoch, now + lease, id])
                return (JobClaim(job: job, epoch: epoch, node: node, previousNode: previous), true)
            }
            return (nil, changed)
        }
        if changed { feed.send(.jobs) }
        return claim
    }

    /// Inside a write: the claim must still hold the running job.
    private static func fence(_ db: Database, _ c: JobClaim) throws {
        let r = try Row.fetchOne(db, sql: "SELECT epoch, status FROM jobs WHERE id = ?", arguments: [c.job.id])
        guard let r, r["epoch"] as Int64 == c.epoch, r["status"] as String == JobStatus.running.rawValue else {
            throw StoreError.fenced(job: c.job.id)
        }
    }

    public func renew(_ c: JobClaim, lease: Double) async throws -> JobAction? {
        try await db.write { db in
            try Self.fence(db, c)
            try db.execute(sql: "UPDATE jobs SET lease_until = ? WHERE id = ?", arguments: [Self.now() + lease, c.job.id])
            return try String.fetchOne(db, sql: "SELECT requested FROM jobs WHERE id = ?", arguments: [c.job.id]).flatMap(JobAction.init(rawValue:))
        }
    }

    public func update(_ c: JobClaim, _ job: FineTuningJob, events: [JobEvent]) async throws {
        try await db.write { db in
            try Self.fence(db, c)
            let done = job.status != .running
            try db.execute(sql: "UPDATE jobs SET status = ?, body = ?\(done ? ", owner = NULL, lease_until = NULL, requested = NULL" : "") WHERE id = ?",
                           arguments: [job.status.rawValue, try Self.encode(job), job.id])
            try Self.insertEvents(db, events)
        }
        if job.status != .running { feed.send(.jobs) }
    }

    static func putModel(_ db: Database, _ m: StoredModel, files: [String: Data]) throws {
        try db.execute(sql: "DELETE FROM model_files WHERE name = ?", arguments: [m.name])
        try db.execute(sql: "INSERT OR REPLACE INTO models (name, job_id, step, digest, created_at) VALUES (?, ?, ?, ?, ?)",
                       arguments: [m.name, m.job, m.step, m.digest, m.created_at])
        for (f, d) in files { try db.execute(sql: "INSERT INTO model_files (name, file, bytes) VALUES (?, ?, ?)", arguments: [m.name, f, d]) }
    }

    public func saveCheckpoint(_ c: JobClaim, step: Int, runFiles: [String: Data], checkpoint: JobCheckpoint?,
                               adapter: [String: Data], events: [JobEvent]) async throws {
        try await db.write { db in
            try Self.fence(db, c)
            try db.execute(sql: "DELETE FROM run_files WHERE job_id = ?", arguments: [c.job.id])
            for (name, d) in runFiles {
                try db.execute(sql: "INSERT INTO run_files (job_id, name, step, bytes) VALUES (?, ?, ?, ?)", arguments: [c.job.id, name, step, d])
            }
            if let k = checkpoint {
                try db.execute(sql: "DELETE FROM checkpoints WHERE fine_tuned_model_checkpoint = ?", arguments: [k.fine_tuned_model_checkpoint])
                try db.execute(sql: """
                    INSERT INTO checkpoints (id, object, fine_tuning_job_id, created_at, step_number, metrics, fine_tuned_model_checkpoint, path)
                    VALUES (?, ?, ?, ?, ?, ?, ?, '')
                    """, arguments: [k.id, k.object, k.fine_tuning_job_id, k.created_at, k.step_number, k.metrics, k.fine_tuned_model_checkpoint])
                try Self.putModel(db, StoredModel(name: k.fine_tuned_model_checkpoint, job: c.job.id, step: step, digest: AdapterDigest.of(adapter),
                                                  created_at: k.created_at), files: adapter)
            }
            try Self.insertEvents(db, events)
        }
        if checkpoint != nil { feed.send(.models) }
    }

    public func runState(job: String) async throws -> (step: Int, files: [String: Data])? {
        try await db.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT name, step, bytes FROM run_files WHERE job_id = ?", arguments: [job])
            guard let first = rows.first else { return nil }
            var files: [String: Data] = [:]
            for r in rows { files[r["name"]] = r["bytes"] }
            return (first["step"], files)
        }
    }

    public func finish(_ c: JobClaim, _ job: FineTuningJob, resultFile: (FileObject, Data)?, model: String,
                       adapter: [String: Data], events: [JobEvent]) async throws {
        if let (f, d) = resultFile { try AtomicFile.write(d, to: filePath(f.id)) }
        do {
            try await db.write { db in
                try Self.fence(db, c)
                if let (f, _) = resultFile { try Self.insertFileRow(db, f) }
                try Self.putModel(db, StoredModel(name: model, job: job.id, step: nil, digest: AdapterDigest.of(adapter),
                                                  created_at: job.finished_at ?? Int(Self.now())), files: adapter)
                try db.execute(sql: "UPDATE jobs SET status = ?, body = ?, owner = NULL, lease_until = NULL, requested = NULL WHERE id = ?",
                               arguments: [job.status.rawValue, try Self.encode(job), job.id])
                try db.execute(sql: "DELETE FROM run_files WHERE job_id = ?", arguments: [job.id])
                try Self.insertEvents(db, events)
            }
        } catch {
            if let (f, _) = resultFile { try? FileManager.default.removeItem(atPath: filePath(f.id)) }
            throw error
        }
        feed.send(.models)
        feed.send(.jobs)
    }

    public func release(_ c: JobClaim, _ job: FineTuningJob, events: [JobEvent]) async throws {
        try await db.write { db in
            try Self.fence(db, c)
            var j = job
            j.status = .queued
            try db.execute(sql: "UPDATE jobs SET status = 'queued', body = ?, owner = NULL, lease_until = NULL WHERE id = ?",
                           arguments: [try Self.encode(j), job.id])
            try Self.insertEvents(db, events)
        }
        feed.send(.jobs)
    }

    // MARK: Models

    public func models() async throws -> [StoredModel] {
        try await db.read { db in
            try Row.fetchAll(db, sql: "SELECT name, job_id, step, digest, created_at FROM models ORDER BY created_at, name").map {
                StoredModel(name: $0["name"], job: $0["job_id"], step: $0["step"], digest: $0["digest"], created_at: $0["created_at"])
            }
        }
    }

    public func modelFiles(_ name: String) async throws -> [String: Data]? {
        try await db.read { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM models WHERE name = ?", arguments: [name]) != nil else { return nil }
            var out: [String: Data] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT file, bytes FROM model_files WHERE name = ?", arguments: [name]) { out[r["file"]] = r["bytes"] }
            return out
        }
    }

    public func deleteModel(_ name: String) async throws -> Bool {
        let gone = try await db.write { db in
            try db.execute(sql: "DELETE FROM models WHERE name = ?", arguments: [name])
            let n = db.changesCount
            try db.execute(sql: "DELETE FROM model_files WHERE name = ?", arguments: [name])
            try db.execute(sql: "DELETE FROM checkpoints WHERE fine_tuned_model_checkpoint = ?", arguments: [name])
            return n > 0
        }
        if gone { feed.send(.models) }
        return gone
    }
}
