import Foundation
import GRDB

/// An uploaded file, as OpenAI's Files API describes it (plus where its bytes are kept).
public struct FileObject: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "files"
    public var id: String
    public var object = "file"
    public var bytes: Int
    public var created_at: Int
    public var filename: String
    public var purpose: String
    public var status: String
    public var status_details: String?
    /// Examples the file holds once validated, and its longest in tokens (ours).
    public var lines: Int?
    public var max_tokens: Int?

    enum CodingKeys: String, CodingKey { case id, object, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens }
}

/// A job's event (`fine_tuning.job.event`).
public struct JobEvent: Codable, Sendable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "events"
    public var seq: Int64?
    public var id: String
    public var object = "fine_tuning.job.event"
    public var job_id: String
    public var created_at: Int
    public var level: String
    public var message: String
    public var type: String
    /// JSON of the event's data (metrics), or nil.
    public var data: String?

    public mutating func didInsert(_ inserted: InsertionSuccess) { seq = inserted.rowID }
}

/// A job's checkpoint (`fine_tuning.job.checkpoint`).
public struct JobCheckpoint: Codable, Sendable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "checkpoints"
    public var seq: Int64?
    public var id: String
    public var object = "fine_tuning.job.checkpoint"
    public var fine_tuning_job_id: String
    public var created_at: Int
    public var step_number: Int
    /// JSON of the metrics at that step.
    public var metrics: String
    public var fine_tuned_model_checkpoint: String
    /// The adapter directory (ours).
    public var path: String

    public mutating func didInsert(_ inserted: InsertionSuccess) { seq = inserted.rowID }
}

/// A stored job: the OpenAI object as JSON, plus the columns the store sorts and selects by.
struct JobRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "jobs"
    var seq: Int64?
    var id: String
    var status: String
    var body: String

    mutating func didInsert(_ inserted: InsertionSuccess) { seq = inserted.rowID }
}

/// Files, jobs, events and checkpoints in SQLite under the state directory (GRDB, WAL): every
/// change is one transaction, so a crash leaves the state as of the last committed change.
public final class FineTuningStore: @unchecked Sendable {
    let db: DatabaseQueue
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        db = try StateDatabase.open(directory: directory, file: "state.sqlite")
        for sub in ["files", "jobs", "uploads"] {
            try FileManager.default.createDirectory(atPath: (directory as NSString).appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "files") { t in
                t.primaryKey("id", .text)
                t.column("object", .text).notNull()
                t.column("bytes", .integer).notNull()
                t.column("created_at", .integer).notNull()
                t.column("filename", .text).notNull()
                t.column("purpose", .text).notNull()
                t.column("status", .text).notNull()
                t.column("status_details", .text)
                t.column("lines", .integer)
                t.column("max_tokens", .integer)
            }
            try db.create(table: "jobs") { t in
                t.autoIncrementedPrimaryKey("seq")
                t.column("id", .text).notNull().unique()
                t.column("status", .text).notNull()
                t.column("body", .text).notNull()
            }
            try db.create(table: "events") { t in
                t.autoIncrementedPrimaryKey("seq")
                t.column("id", .text).notNull().unique()
                t.column("object", .text).notNull()
                t.column("job_id", .text).notNull().indexed()
                t.column("created_at", .integer).notNull()
                t.column("level", .text).notNull()
                t.column("message", .text).notNull()
                t.column("type", .text).notNull()
                t.column("data", .text)
            }
            try db.create(table: "checkpoints") { t in
                t.autoIncrementedPrimaryKey("seq")
                t.column("id", .text).notNull().unique()
                t.column("object", .text).notNull()
                t.column("fine_tuning_job_id", .text).notNull().indexed()
                t.column("created_at", .integer).notNull()
                t.column("step_number", .integer).notNull()
                t.column("metrics", .text).notNull()
                t.column("fine_tuned_model_checkpoint", .text).notNull()
                t.column("path", .text).notNull()
            }
        }
        try migrator.migrate(db)
    }

    /// Where an uploaded file's bytes live (ids are checked before they become paths).
    public func filePath(_ id: String) -> String { (directory as NSString).appendingPathComponent("files/\(id)") }
    public func jobDirectory(_ id: String) -> String { (directory as NSString).appendingPathComponent("jobs/\(id)") }
    public var uploadsDirectory: String { (directory as NSString).appendingPathComponent("uploads") }

    // MARK: Files

    public func insert(_ f: FileObject) throws { try db.write { try f.insert($0) } }
    public func update(_ f: FileObject) throws { try db.write { try f.update($0) } }
    public func file(_ id: String) throws -> FileObject? { try db.read { try FileObject.fetchOne($0, key: id) } }
    public func deleteFile(_ id: String) throws -> Bool { try db.write { try FileObject.deleteOne($0, key: id) } }

    /// Files newest first (or oldest with `ascending`), after the cursor `after`.
    public func files(purpose: String?, after: String?, limit: Int, ascending: Bool) throws -> (items: [FileObject], more: Bool) {
        try db.read { db in
            var q = FileObject.all()
            if let purpose { q = q.filter(Column("purpose") == purpose) }
            // In upload order (rowid): created_at has only one-second resolution.
            if let after, let cursor = try Int64.fetchOne(db, sql: "SELECT rowid FROM files WHERE id = ?", arguments: [after]) {
                q = ascending ? q.filter(Column.rowID > cursor) : q.filter(Column.rowID < cursor)
            }
            q = ascending ? q.order(Column.rowID.asc) : q.order(Column.rowID.desc)
            let rows = try q.limit(limit + 1).fetchAll(db)
            return (Array(rows.prefix(limit)), rows.count > limit)
        }
    }

    // MARK: Jobs

    public func insert(_ job: FineTuningJob) throws {
        var row = JobRow(id: job.id, status: job.status, body: try Self.encode(job))
        try db.write { try row.insert($0) }
    }

    public func update(_ job: FineTuningJob) throws {
        try db.write { db in
            try db.execute(sql: "UPDATE jobs SET status = ?, body = ? WHERE id = ?", arguments: [job.status, try Self.encode(job), job.id])
        }
    }

    public func job(_ id: String) throws -> FineTuningJob? {
        try db.read { try JobRow.filter(Column("id") == id).fetchOne($0) }.map { try Self.decode($0.body) }
    }

    /// Jobs newest first, after the job `after`.
    public func jobs(after: String?, limit: Int) throws -> (items: [FineTuningJob], more: Bool) {
        let rows: [JobRow] = try db.read { db in
            var q = JobRow.all()
            if let after, let cursor = try JobRow.filter(Column("id") == after).fetchOne(db), let s = cursor.seq {
                q = q.filter(Column("seq") < s)
            }
            return try q.order(Column("seq").desc).limit(limit + 1).fetchAll(db)
        }
        return (try rows.prefix(limit).map { try Self.decode($0.body) }, rows.count > limit)
    }

    /// Jobs in these states, oldest first (the queue).
    public func jobs(status: [String]) throws -> [FineTuningJob] {
        try db.read { try JobRow.filter(status.contains(Column("status"))).order(Column("seq").asc).fetchAll($0) }
            .map { try Self.decode($0.body) }
    }

    static func encode(_ job: FineTuningJob) throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try enc.encode(job), as: UTF8.self)
    }

    static func decode(_ s: String) throws -> FineTuningJob { try JSONDecoder().decode(FineTuningJob.self, from: Data(s.utf8)) }

    // MARK: Events and checkpoints

    public func add(_ e: JobEvent) throws {
        var e = e
        try db.write { try e.insert($0) }
    }

    /// Events newest first, after the event `after`.
    public func events(job: String, after: String?, limit: Int) throws -> (items: [JobEvent], more: Bool) {
        try page(JobEvent.self, jobColumn: "job_id", job: job, after: after, limit: limit)
    }

    /// Rows of a job's events or checkpoints, newest first (by insertion), after the row `after`.
    private func page<R: FetchableRecord & TableRecord>(_: R.Type, jobColumn: String, job: String, after: String?,
                                                        limit: Int) throws -> (items: [R], more: Bool) {
        try db.read { db in
            var q = R.filter(Column(jobColumn) == job)
            if let after, let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM \(R.databaseTableName) WHERE id = ?", arguments: [after]) {
                q = q.filter(Column("seq") < seq)
            }
            let rows = try q.order(Column("seq").desc).limit(limit + 1).fetchAll(db)
            return (Array(rows.prefix(limit)), rows.count > limit)
        }
    }

    public func add(_ c: JobCheckpoint) throws {
        var c = c
        try db.write { try c.insert($0) }
    }

    public func checkpoints(job: String, after: String?, limit: Int) throws -> (items: [JobCheckpoint], more: Bool) {
        try page(JobCheckpoint.self, jobColumn: "fine_tuning_job_id", job: job, after: after, limit: limit)
    }

    public func allCheckpoints() throws -> [JobCheckpoint] { try db.read { try JobCheckpoint.order(Column("seq").asc).fetchAll($0) } }

    public func deleteCheckpoints(model: String) throws -> [JobCheckpoint] {
        try db.write { db in
            let rows = try JobCheckpoint.filter(Column("fine_tuned_model_checkpoint") == model).fetchAll(db)
            for r in rows { _ = try r.delete(db) }
            return rows
        }
    }
}
