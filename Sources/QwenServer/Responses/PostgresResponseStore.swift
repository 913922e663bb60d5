import Foundation
import PostgresNIO
import QwenChat

/// Responses in the PostgreSQL database the replicas share (`--state-db postgres://…`), so a
/// conversation stored through one replica is continued, read or deleted through any other.
/// A background response runs on the replica that took it (`node`), which renews its lease while
/// it runs; a cancel sent elsewhere is recorded on the row and reaches that replica at its next
/// heartbeat; one whose replica stopped renewing is failed when it is next read.
final class PostgresResponseStore: ResponseStore, @unchecked Sendable {
    let db: PostgresFineTuningStore
    /// This replica's node id.
    let node: String
    /// Seconds a background response stays this replica's without a heartbeat.
    let lease: Double

    init(database: PostgresFineTuningStore, node: String, lease: Double) {
        db = database
        self.node = node
        self.lease = lease
    }

    static let unfinished = "('queued', 'in_progress')"
    typealias Row = (String, String, String)

    static func decode(_ r: Row) throws -> StoredResponse {
        StoredResponse(response: try JSONDecoder().decode(ResponseObject.self, from: Data(r.0.utf8)),
                       input: try JSONDecoder().decode([JSONValue].self, from: Data(r.1.utf8)), owner: r.2)
    }

    func insert(_ r: StoredResponse) async throws {
        let body = ResponseJSON.encode(r.response), input = ResponseJSON.encode(r.input)
        let (node, lease) = (self.node, self.lease)
        try await db.run("storing response \(r.response.id)") {
            try await self.db.client.query("""
                INSERT INTO responses (id, owner, created_at, status, previous_response_id, body, input, node, lease_until)
                VALUES (\(r.response.id), \(r.owner), \(r.response.created_at), \(r.response.status), \(r.response.previous_response_id),
                        \(body), \(input), \(node), now() + make_interval(secs => \(lease)))
                """, logger: self.db.logger)
        }
    }

    func update(_ r: ResponseObject) async throws {
        let body = ResponseJSON.encode(r)
        try await db.run("saving response \(r.id)") {
            try await self.db.client.query("""
                UPDATE responses SET status = \(r.status), body = \(body) WHERE id = \(r.id) AND status IN ('queued', 'in_progress')
                """, logger: self.db.logger)
        }
    }

    func get(_ id: String, owner: String) async throws -> StoredResponse? {
        try await failAbandoned([id])
        return try await db.run("reading response \(id)") {
            for try await r in try await self.db.client.query("SELECT body, input, owner FROM responses WHERE id = \(id) AND owner = \(owner)",
                                                              logger: self.db.logger).decode(Row.self) {
                return try Self.decode(r)
            }
            return nil
        }
    }

    /// Background responses among `ids` whose replica stopped renewing them end as failed.
    func failAbandoned(_ ids: [String]) async throws {
        let stale: [Row] = try await db.run("reading responses") {
            var out: [Row] = []
            for try await r in try await self.db.client.query("""
                SELECT body, input, owner FROM responses WHERE id = ANY(\(ids)) AND status IN ('queued', 'in_progress') AND lease_until < now()
                """, logger: self.db.logger).decode(Row.self) { out.append(r) }
            return out
        }
        try await fail(try stale.map { try Self.decode($0).response }, message: "the replica running this response stopped")
    }

    func conversation(_ id: String, owner: String, maxBytes: Int) async throws -> (turns: [StoredResponse], complete: Bool)? {
        try await failAbandoned([id])
        // The same walk as SQLite's: newest first, stopping before the turn that would pass `maxBytes`.
        let rows: [(Row, Int, Bool)] = try await db.run("reading a conversation") {
            var out: [(Row, Int, Bool)] = []
            for try await r in try await self.db.client.query("""
                WITH RECURSIVE chain(id, depth, bytes) AS (
                  SELECT id, 0, octet_length(body) + octet_length(input) FROM responses WHERE id = \(id) AND owner = \(owner)
                  UNION ALL
                  SELECT r.previous_response_id, chain.depth + 1, chain.bytes + octet_length(p.body) + octet_length(p.input)
                  FROM responses r JOIN chain ON r.id = chain.id JOIN responses p ON p.id = r.previous_response_id
                  WHERE chain.depth < \(SQLiteResponseStore.maxTurns) AND chain.bytes + octet_length(p.body) + octet_length(p.input) <= \(maxBytes)
                )
                SELECT responses.body, responses.input, responses.owner, chain.depth,
                       EXISTS (SELECT 1 FROM responses q WHERE q.id = responses.previous_response_id)
                FROM chain JOIN responses ON responses.id = chain.id
                WHERE responses.owner = \(owner) ORDER BY chain.depth DESC
                """, logger: self.db.logger).decode((String, String, String, Int, Bool).self) {
                out.append(((r.0, r.1, r.2), r.3, r.4))
            }
            return out
        }
        return try ResponseChain.assemble(try rows.map { (try Self.decode($0.0), $0.1, $0.2) })
    }

    func delete(_ id: String, owner: String) async throws -> Bool {
        try await db.run("deleting response \(id)") {
            var n = 0
            for try await _ in try await self.db.client.query("DELETE FROM responses WHERE id = \(id) AND owner = \(owner) RETURNING id",
                                                              logger: self.db.logger).decode(String.self) { n += 1 }
            return n > 0
        }
    }

    func purge(createdBefore cutoff: Int) async throws -> Int {
        try await db.run("deleting old responses") {
            var n = 0
            for try await _ in try await self.db.client.query("DELETE FROM responses WHERE created_at < \(cutoff) RETURNING id",
                                                              logger: self.db.logger).decode(String.self) { n += 1 }
            return n
        }
    }

    func failUnfinished(message: String) async throws -> Int {
        let node = self.node
        let rows: [Row] = try await db.run("reading unfinished responses") {
            var out: [Row] = []
            for try await r in try await self.db.client.query("""
                SELECT body, input, owner FROM responses WHERE node = \(node) AND status IN ('queued', 'in_progress')
                """, logger: self.db.logger).decode(Row.self) { out.append(r) }
            return out
        }
        try await fail(try rows.map { try Self.decode($0).response }, message: message)
        return rows.count
    }

    func heartbeat(_ running: [String]) async throws -> [String] {
        guard !running.isEmpty else { return [] }
        let (node, lease) = (self.node, self.lease)
        return try await db.run("renewing background responses") {
            var asked: [String] = []
            for try await (id, cancel) in try await self.db.client.query("""
                UPDATE responses SET lease_until = now() + make_interval(secs => \(lease))
                WHERE id = ANY(\(running)) AND node = \(node) RETURNING id, cancel_requested
                """, logger: self.db.logger).decode((String, Bool).self) where cancel { asked.append(id) }
            return asked
        }
    }

    func requestCancel(_ id: String) async throws -> Bool {
        let node = self.node
        return try await db.run("cancelling response \(id)") {
            var n = 0
            for try await _ in try await self.db.client.query("""
                UPDATE responses SET cancel_requested = true WHERE id = \(id) AND node <> \(node) AND status IN ('queued', 'in_progress') RETURNING id
                """, logger: self.db.logger).decode(String.self) { n += 1 }
            return n > 0
        }
    }
}
