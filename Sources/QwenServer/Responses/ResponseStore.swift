import Foundation
import GRDB
import QwenChat

/// A stored response: the object, the input items of its request, and whose it is.
struct StoredResponse {
    var response: ResponseObject
    var input: [JSONValue]
    /// The caller's key digest (`Caller.owner`): only that key reads, continues or deletes it.
    var owner: String
}

/// Where responses are kept (`store: true`). One implementation per database; every read is
/// by owner, so one key never sees another's responses (not even that they exist). SQLite is
/// this process's alone; PostgreSQL is shared by replicas, so a background response runs on the
/// replica that took it, holds a lease it renews, and a cancel sent to another replica reaches it.
protocol ResponseStore: Sendable {
    func insert(_ r: StoredResponse) async throws
    /// Replaces the response object (status, output, usage) of a stored response that has not
    /// ended: an ended one (completed, failed, cancelled, incomplete) is never overwritten.
    func update(_ r: ResponseObject) async throws
    func get(_ id: String, owner: String) async throws -> StoredResponse?
    /// The conversation ending at `id`, oldest first, as far back as `maxBytes` of stored JSON
    /// reach (`complete` false when older turns were left out); nil if `id` is not the owner's.
    /// Throws `BrokenChain` when a response in it was deleted or expired.
    func conversation(_ id: String, owner: String, maxBytes: Int) async throws -> (turns: [StoredResponse], complete: Bool)?
    func delete(_ id: String, owner: String) async throws -> Bool
    /// Deletes responses created before `cutoff` (seconds since 1970); returns how many.
    func purge(createdBefore cutoff: Int) async throws -> Int
    /// Responses this replica left queued or in progress when it stopped: marked failed.
    func failUnfinished(message: String) async throws -> Int
    /// Renews this replica's hold on the background responses it runs; returns those whose
    /// cancel was asked through another replica.
    func heartbeat(_ running: [String]) async throws -> [String]
    /// Asks the replica running a background response to cancel it: false when no other
    /// replica can be running it (it has ended, or it is this replica's).
    func requestCancel(_ id: String) async throws -> Bool
}

struct BrokenChain: Error { let missing: String }

extension ResponseStore {
    /// Ends unfinished responses as failed, saying why.
    func fail(_ responses: [ResponseObject], message: String) async throws {
        for var r in responses {
            r.status = "failed"
            r.error = .init(code: "server_error", message: message)
            try await update(r)
        }
    }
}

/// A conversation as a store's walk of `previous_response_id`s found it.
enum ResponseChain {
    /// `rows`: the turns read, oldest first, each with its distance from the newest and whether
    /// the turn before it is stored. Nil when the newest is not there; `BrokenChain` when a link
    /// is missing; `complete` false when older turns are stored but were left out.
    static func assemble(_ rows: [(turn: StoredResponse, depth: Int, olderStored: Bool)]) throws -> (turns: [StoredResponse], complete: Bool)? {
        guard let last = rows.last, last.depth == 0 else { return nil }
        // Every link must be there: depths 0…n without a gap.
        for (k, r) in rows.enumerated() where r.depth != rows.count - 1 - k {
            throw BrokenChain(missing: r.turn.response.previous_response_id ?? "?")
        }
        let turns = rows.map(\.turn)
        // The oldest turn read starts the conversation, or the turn before it is there but was left out.
        if let missing = turns.first?.response.previous_response_id {
            guard rows.first!.olderStored else { throw BrokenChain(missing: missing) }
            return (turns, false)
        }
        return (turns, true)
    }
}

/// Responses in SQLite (GRDB, WAL) beside the fine-tuning state: `responses.sqlite` in the state directory.
final class SQLiteResponseStore: ResponseStore, @unchecked Sendable {
    struct Row: Codable, FetchableRecord, PersistableRecord {
        static let databaseTableName = "responses"
        var id: String
        var owner: String
        var created_at: Int
        var status: String
        var previous_response_id: String?
        var body: String
        var input: String
    }

    let db: DatabaseQueue

    init(directory: String) throws {
        db = try StateDatabase.open(directory: directory, file: "responses.sqlite")
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "responses") { t in
                t.primaryKey("id", .text)
                t.column("owner", .text).notNull()
                t.column("created_at", .integer).notNull().indexed()
                t.column("status", .text).notNull()
                t.column("previous_response_id", .text)
                t.column("body", .text).notNull()
                t.column("input", .text).notNull()
            }
        }
        try migrator.migrate(db)
    }

    static func encode<T: Encodable>(_ v: T) -> String { ResponseJSON.encode(v) }

    func insert(_ r: StoredResponse) async throws {
        let row = Row(id: r.response.id, owner: r.owner, created_at: r.response.created_at, status: r.response.status,
                      previous_response_id: r.response.previous_response_id, body: Self.encode(r.response), input: Self.encode(r.input))
        try await db.write { try row.insert($0) }
    }

    func update(_ r: ResponseObject) async throws {
        try await db.write { db in
            try db.execute(sql: "UPDATE responses SET status = ?, body = ? WHERE id = ? AND status IN ('queued', 'in_progress')",
                           arguments: [r.status, Self.encode(r), r.id])
        }
    }

    static func decode(_ row: Row) throws -> StoredResponse {
        StoredResponse(response: try JSONDecoder().decode(ResponseObject.self, from: Data(row.body.utf8)),
                       input: try JSONDecoder().decode([JSONValue].self, from: Data(row.input.utf8)), owner: row.owner)
    }

    func get(_ id: String, owner: String) async throws -> StoredResponse? {
        try await db.read { try Row.filter(Column("id") == id && Column("owner") == owner).fetchOne($0) }.map(Self.decode)
    }

    /// One query walks the chain of `previous_response_id`s (a recursive CTE), at most `maxTurns` deep.
    static let maxTurns = 10_000

    func conversation(_ id: String, owner: String, maxBytes: Int) async throws -> (turns: [StoredResponse], complete: Bool)? {
        // The walk stops before the turn that would pass `maxBytes` (the sizes summed newest first).
        let rows: [(Row, Int, Bool)] = try await db.read { db in
            let sql = """
                WITH RECURSIVE chain(id, depth, bytes) AS (
                  SELECT id, 0, length(body) + length(input) FROM responses WHERE id = ? AND owner = ?
                  UNION ALL
                  SELECT r.previous_response_id, chain.depth + 1, chain.bytes + p.size
                  FROM responses r JOIN chain ON r.id = chain.id
                  JOIN (SELECT id, length(body) + length(input) AS size FROM responses) p ON p.id = r.previous_response_id
                  WHERE r.previous_response_id IS NOT NULL AND chain.depth < ? AND chain.bytes + p.size <= ?
                )
                SELECT responses.*, chain.depth AS depth,
                       (SELECT count(*) FROM responses q WHERE q.id = responses.previous_response_id) AS older
                FROM chain JOIN responses ON responses.id = chain.id
                WHERE responses.owner = ? ORDER BY chain.depth DESC
                """
            return try GRDB.Row.fetchAll(db, sql: sql, arguments: [id, owner, Self.maxTurns, maxBytes, owner])
                .map { (try Row(row: $0), $0["depth"], ($0["older"] as Int) > 0) }
        }
        return try ResponseChain.assemble(try rows.map { (try Self.decode($0.0), $0.1, $0.2) })
    }

    func delete(_ id: String, owner: String) async throws -> Bool {
        try await db.write { try Row.filter(Column("id") == id && Column("owner") == owner).deleteAll($0) > 0 }
    }

    func purge(createdBefore cutoff: Int) async throws -> Int {
        try await db.write { try Row.filter(Column("created_at") < cutoff).deleteAll($0) }
    }

    func failUnfinished(message: String) async throws -> Int {
        let rows = try await db.read { try Row.filter(["queued", "in_progress"].contains(Column("status"))).fetchAll($0) }
        try await fail(try rows.map { try Self.decode($0).response }, message: message)
        return rows.count
    }

    /// One process owns the state directory: every background response is this one's.
    func heartbeat(_ running: [String]) async throws -> [String] { [] }
    func requestCancel(_ id: String) async throws -> Bool { false }
}
