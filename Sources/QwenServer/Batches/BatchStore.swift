import Foundation
import GRDB
import QwenChat

/// Where batches and their lines' results are kept. A line's result is written once (the
/// first write wins), so a batch resumed after a crash, or by another replica, never reports a
/// `custom_id` twice. A batch is run by one runner at a time: `claim` takes an active batch no
/// runner holds (or whose holder's lease ran out) and the holder renews its lease while it runs.
protocol BatchStore: Sendable {
    func insert(_ b: Batch) async throws
    /// The batch with its request counts as of now.
    func get(_ id: String) async throws -> Batch?
    func list(after: String?, limit: Int) async throws -> (items: [Batch], more: Bool)
    /// Reads a batch under its row's lock, lets `change` edit it (false: leave it as it is) and
    /// writes it back; the batch as stored after, or nil when there is none.
    func transition(_ id: String, _ change: @escaping @Sendable (inout Batch) -> Bool) async throws -> Batch?
    /// The oldest active batch that no runner holds, or whose runner's lease ran out, now held
    /// by `node` for `lease` seconds; with `takeOver`, also one `node` itself held (it restarted).
    func claim(node: String, lease: Double, takeOver: Bool) async throws -> Batch?
    /// Extends `node`'s hold; the batch as stored now, or nil when the hold was lost.
    func renew(_ id: String, node: String, lease: Double) async throws -> Batch?
    /// Gives up `node`'s hold (the batch ended, or this runner stops).
    func release(_ id: String, node: String) async throws
    func addLines(_ id: String, _ lines: [BatchLine]) async throws
    func pendingLines(_ id: String) async throws -> [BatchLine]
    /// Records a line's output (`ok`: for the output file, else the error file); false if it had one already.
    func finish(_ id: String, line: Int, ok: Bool, output: String) async throws -> Bool
    /// The recorded outputs in line order: (ok, output line).
    func outputs(_ id: String) async throws -> [(ok: Bool, output: String)]
}

/// Batches in SQLite (GRDB, WAL): `batches.sqlite` in the state directory.
final class SQLiteBatchStore: BatchStore, @unchecked Sendable {
    let db: DatabaseQueue

    init(directory: String) throws {
        db = try StateDatabase.open(directory: directory, file: "batches.sqlite")
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "batches") { t in
                t.autoIncrementedPrimaryKey("seq")
                t.column("id", .text).notNull().unique()
                t.column("status", .text).notNull()
                t.column("body", .text).notNull()
            }
            try db.create(table: "lines") { t in
                t.column("batch_id", .text).notNull()
                t.column("line", .integer).notNull()
                t.column("custom_id", .text).notNull()
                t.column("body", .text).notNull()
                /// pending, ok or error
                t.column("state", .text).notNull()
                t.column("output", .text)
                t.primaryKey(["batch_id", "line"])
            }
            try db.create(index: "lines_state", on: "lines", columns: ["batch_id", "state"])
        }
        // The runner's hold (node, lease in seconds since 1970), as in the PostgreSQL store.
        migrator.registerMigration("v2") { db in
            try db.alter(table: "batches") { t in
                t.add(column: "node", .text)
                t.add(column: "lease_until", .double)
            }
        }
        try migrator.migrate(db)
        // One server holds the state directory (StateLock): every hold recorded is a previous run's.
        try db.writeWithoutTransaction { try $0.execute(sql: "UPDATE batches SET node = NULL, lease_until = NULL") }
    }

    static func encode(_ b: Batch) -> String { ResponseJSON.encode(b) }
    static func decode(_ s: String) throws -> Batch { try JSONDecoder().decode(Batch.self, from: Data(s.utf8)) }

    func insert(_ b: Batch) async throws {
        try await db.write { try $0.execute(sql: "INSERT INTO batches (id, status, body) VALUES (?, ?, ?)", arguments: [b.id, b.status, Self.encode(b)]) }
    }

    func transition(_ id: String, _ change: @escaping @Sendable (inout Batch) -> Bool) async throws -> Batch? {
        try await db.write { db in
            guard let body = try String.fetchOne(db, sql: "SELECT body FROM batches WHERE id = ?", arguments: [id]) else { return nil }
            var b = try Self.decode(body)
            if change(&b) {
                try db.execute(sql: "UPDATE batches SET status = ?, body = ? WHERE id = ?", arguments: [b.status, Self.encode(b), id])
            }
            return try withCounts(db, b)
        }
    }

    static var clock: Double { Date().timeIntervalSince1970 }

    func claim(node: String, lease: Double, takeOver: Bool) async throws -> Batch? {
        try await db.write { db in
            let now = Self.clock
            guard let row = try GRDB.Row.fetchOne(db, sql: """
                SELECT id, body FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
                AND (node IS NULL OR lease_until < ? OR (? AND node = ?)) ORDER BY seq LIMIT 1
                """, arguments: [now, takeOver, node]) else { return nil }
            try db.execute(sql: "UPDATE batches SET node = ?, lease_until = ? WHERE id = ?", arguments: [node, now + lease, row["id"] as String])
            return try Self.decode(row["body"])
        }
    }

    func renew(_ id: String, node: String, lease: Double) async throws -> Batch? {
        try await db.write { db in
            try db.execute(sql: "UPDATE batches SET lease_until = ? WHERE id = ? AND node = ?", arguments: [Self.clock + lease, id, node])
            guard db.changesCount > 0, let body = try String.fetchOne(db, sql: "SELECT body FROM batches WHERE id = ?", arguments: [id]) else { return nil }
            return try Self.decode(body)
        }
    }

    func release(_ id: String, node: String) async throws {
        try await db.write { try $0.execute(sql: "UPDATE batches SET node = NULL, lease_until = NULL WHERE id = ? AND node = ?", arguments: [id, node]) }
    }

    private func withCounts(_ db: Database, _ b: Batch) throws -> Batch {
        var b = b
        let rows = try GRDB.Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM lines WHERE batch_id = ? GROUP BY state", arguments: [b.id])
        guard !rows.isEmpty else { return b }
        var c = Batch.RequestCounts()
        for r in rows {
            let n: Int = r["n"], state: String = r["state"]
            c.total += n
            if state == "ok" { c.completed += n } else if state == "error" { c.failed += n }
        }
        b.request_counts = c
        return b
    }

    func get(_ id: String) async throws -> Batch? {
        try await db.read { db in
            guard let body = try String.fetchOne(db, sql: "SELECT body FROM batches WHERE id = ?", arguments: [id]) else { return nil }
            return try withCounts(db, try Self.decode(body))
        }
    }

    func list(after: String?, limit: Int) async throws -> (items: [Batch], more: Bool) {
        try await db.read { db in
            var sql = "SELECT body FROM batches"
            var args: StatementArguments = []
            if let after, let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM batches WHERE id = ?", arguments: [after]) {
                sql += " WHERE seq < ?"
                args += [seq]
            }
            sql += " ORDER BY seq DESC LIMIT ?"
            args += [limit + 1]
            let bodies = try String.fetchAll(db, sql: sql, arguments: args)
            let items = try bodies.prefix(limit).map { try withCounts(db, try Self.decode($0)) }
            return (items, bodies.count > limit)
        }
    }

    func addLines(_ id: String, _ lines: [BatchLine]) async throws {
        try await db.write { db in
            let st = try db.makeStatement(sql: "INSERT OR IGNORE INTO lines (batch_id, line, custom_id, body, state) VALUES (?, ?, ?, ?, 'pending')")
            for l in lines { try st.execute(arguments: [id, l.line, l.customID, l.body.compact]) }
        }
    }

    func pendingLines(_ id: String) async throws -> [BatchLine] {
        try await db.read { db in
            try GRDB.Row.fetchAll(db, sql: "SELECT line, custom_id, body FROM lines WHERE batch_id = ? AND state = 'pending' ORDER BY line", arguments: [id])
                .map { BatchLine(line: $0["line"], customID: $0["custom_id"], body: try JSONValue.parse($0["body"] as String)) }
        }
    }

    func finish(_ id: String, line: Int, ok: Bool, output: String) async throws -> Bool {
        try await db.write { db in
            try db.execute(sql: "UPDATE lines SET state = ?, output = ? WHERE batch_id = ? AND line = ? AND state = 'pending'",
                           arguments: [ok ? "ok" : "error", output, id, line])
            return db.changesCount > 0
        }
    }

    func outputs(_ id: String) async throws -> [(ok: Bool, output: String)] {
        try await db.read { db in
            try GRDB.Row.fetchAll(db, sql: "SELECT state, output FROM lines WHERE batch_id = ? AND state != 'pending' ORDER BY line", arguments: [id])
                .map { (($0["state"] as String) == "ok", $0["output"] as String) }
        }
    }
}
