import Foundation
import PostgresNIO
import QwenChat

/// Batches in the PostgreSQL database the replicas share: created, listed, read and cancelled
/// through any replica. One replica runs a batch at a time (claimed with `FOR UPDATE SKIP
/// LOCKED`, held by a lease its runner renews every second); when it dies, another claims the
/// batch after the lease and runs the lines not yet recorded.
final class PostgresBatchStore: BatchStore, @unchecked Sendable {
    let db: PostgresFineTuningStore

    init(database: PostgresFineTuningStore) { db = database }

    func insert(_ b: Batch) async throws {
        let body = SQLiteBatchStore.encode(b)
        try await db.run("creating batch \(b.id)") {
            try await self.db.client.query("INSERT INTO batches (id, status, body) VALUES (\(b.id), \(b.status), \(body))", logger: self.db.logger)
        }
    }

    /// The request counts as of now, from the lines.
    func withCounts(_ conn: PostgresConnection, _ b: Batch) async throws -> Batch {
        var b = b, c = Batch.RequestCounts(), any = false
        for try await (state, n) in try await conn.query("SELECT state, count(*) FROM batch_lines WHERE batch_id = \(b.id) GROUP BY state",
                                                         logger: db.logger).decode((String, Int).self) {
            any = true
            c.total += n
            if state == "ok" { c.completed += n } else if state == "error" { c.failed += n }
        }
        if any { b.request_counts = c }
        return b
    }

    func get(_ id: String) async throws -> Batch? {
        try await db.tx("reading batch \(id)") { conn in
            for try await body in try await conn.query("SELECT body FROM batches WHERE id = \(id)", logger: self.db.logger).decode(String.self) {
                return try await self.withCounts(conn, try SQLiteBatchStore.decode(body))
            }
            return nil
        }
    }

    func list(after: String?, limit: Int) async throws -> (items: [Batch], more: Bool) {
        try await db.tx("listing batches") { conn in
            var bodies: [String] = []
            for try await b in try await conn.query("""
                SELECT body FROM batches WHERE seq < coalesce((SELECT seq FROM batches WHERE id = \(after)), 9223372036854775807)
                ORDER BY seq DESC LIMIT \(limit + 1)
                """, logger: self.db.logger).decode(String.self) { bodies.append(b) }
            var items: [Batch] = []
            for b in bodies.prefix(limit) { items.append(try await self.withCounts(conn, try SQLiteBatchStore.decode(b))) }
            return (items, bodies.count > limit)
        }
    }

    func transition(_ id: String, _ change: @escaping @Sendable (inout Batch) -> Bool) async throws -> Batch? {
        try await db.tx("changing batch \(id)") { conn in
            var body: String?
            for try await b in try await conn.query("SELECT body FROM batches WHERE id = \(id) FOR UPDATE", logger: self.db.logger).decode(String.self) { body = b }
            guard let body else { return nil }
            var b = try SQLiteBatchStore.decode(body)
            if change(&b) {
                try await conn.query("UPDATE batches SET status = \(b.status), body = \(SQLiteBatchStore.encode(b)) WHERE id = \(id)", logger: self.db.logger)
            }
            return try await self.withCounts(conn, b)
        }
    }

    func claim(node: String, lease: Double, takeOver: Bool) async throws -> Batch? {
        try await db.tx("claiming a batch") { conn in
            var row: (String, String)?
            for try await r in try await conn.query("""
                SELECT id, body FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
                AND (node IS NULL OR lease_until < now() OR (\(takeOver) AND node = \(node)))
                ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
                """, logger: self.db.logger).decode((String, String).self) { row = r }
            guard let (id, body) = row else { return nil }
            try await conn.query("UPDATE batches SET node = \(node), lease_until = now() + make_interval(secs => \(lease)) WHERE id = \(id)",
                                 logger: self.db.logger)
            return try SQLiteBatchStore.decode(body)
        }
    }

    func renew(_ id: String, node: String, lease: Double) async throws -> Batch? {
        try await db.run("renewing the hold on batch \(id)") {
            for try await body in try await self.db.client.query("""
                UPDATE batches SET lease_until = now() + make_interval(secs => \(lease)) WHERE id = \(id) AND node = \(node) RETURNING body
                """, logger: self.db.logger).decode(String.self) { return try SQLiteBatchStore.decode(body) }
            return nil
        }
    }

    func release(_ id: String, node: String) async throws {
        try await db.run("releasing batch \(id)") {
            try await self.db.client.query("UPDATE batches SET node = NULL, lease_until = NULL WHERE id = \(id) AND node = \(node)",
                                           logger: self.db.logger)
        }
    }

    func addLines(_ id: String, _ lines: [BatchLine]) async throws {
        try await db.tx("storing the lines of \(id)") { conn in
            for l in lines {
                try await conn.query("""
                    INSERT INTO batch_lines (batch_id, line, custom_id, body, state) VALUES (\(id), \(l.line), \(l.customID), \(l.body.compact), 'pending')
                    ON CONFLICT DO NOTHING
                    """, logger: self.db.logger)
            }
        }
    }

    func pendingLines(_ id: String) async throws -> [BatchLine] {
        let rows: [(Int, String, String)] = try await db.run("reading the lines of \(id)") {
            var out: [(Int, String, String)] = []
            for try await r in try await self.db.client.query("""
                SELECT line, custom_id, body FROM batch_lines WHERE batch_id = \(id) AND state = 'pending' ORDER BY line
                """, logger: self.db.logger).decode((Int, String, String).self) { out.append(r) }
            return out
        }
        return try rows.map { BatchLine(line: $0.0, customID: $0.1, body: try JSONValue.parse($0.2)) }
    }

    func finish(_ id: String, line: Int, ok: Bool, output: String) async throws -> Bool {
        try await db.run("recording line \(line) of \(id)") {
            var n = 0
            for try await _ in try await self.db.client.query("""
                UPDATE batch_lines SET state = \(ok ? "ok" : "error"), output = \(output)
                WHERE batch_id = \(id) AND line = \(line) AND state = 'pending' RETURNING line
                """, logger: self.db.logger).decode(Int.self) { n += 1 }
            return n > 0
        }
    }

    func outputs(_ id: String) async throws -> [(ok: Bool, output: String)] {
        try await db.run("reading the results of \(id)") {
            var out: [(ok: Bool, output: String)] = []
            for try await (state, output) in try await self.db.client.query("""
                SELECT state, output FROM batch_lines WHERE batch_id = \(id) AND state <> 'pending' ORDER BY line
                """, logger: self.db.logger).decode((String, String).self) { out.append((state == "ok", output)) }
            return out
        }
    }
}
