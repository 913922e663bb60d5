import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import PostgresNIO
import QwenRuntime

/// The store shared by several replicas: everything durable in PostgreSQL (13+) — file bytes in
/// 1 MiB chunks, jobs with their leases, events, checkpoints, run state and adapters — so a
/// replica needs only the URL. Jobs are claimed with `FOR UPDATE SKIP LOCKED`; writes are
/// fenced by the claim's epoch under the job row's lock; changes are announced with NOTIFY on
/// `qwen_serve` (replicas also poll, so a lost notice only delays). Every operation gives up
/// after `timeout` seconds with `StoreError.unavailable`, so no caller waits on a dead database.
public final class PostgresFineTuningStore: FineTuningStore, @unchecked Sendable {
    public let backend = "postgres"
    let client: PostgresClient
    let logger: Logger
    /// Where cached copies of file bytes are kept (`<state-dir>/cache/files`).
    let cacheDirectory: String
    let timeout: Double
    private let feed = ChangeFeed()
    private var tasks: [Task<Void, Never>] = []
    static let channel = "qwen_serve"
    static let idleInTransaction = "5s"
    static let chunkBytes = 1 << 20

    public init(configuration: PostgresClient.Configuration, cacheDirectory: String, timeout: Double = 10, logger: Logger) {
        var config = configuration
        config.options.connectTimeout = .seconds(Int64(max(1, timeout / 2)))
        // A replica paused (SIGSTOP, a frozen VM) in the middle of a transaction would hold its
        // row locks for as long as its connection lives, and other replicas' SKIP LOCKED claims
        // would pass its job by forever: PostgreSQL ends such a session after a few idle seconds.
        // (Our transactions are a few quick statements; none waits on anything else between them.)
        config.options.additionalStartupParameters.append(("idle_in_transaction_session_timeout", Self.idleInTransaction))
        client = PostgresClient(configuration: config, backgroundLogger: logger)
        self.logger = logger
        self.cacheDirectory = cacheDirectory
        self.timeout = timeout
        let c = client
        tasks.append(Task { await c.run() })
        tasks.append(Task { [weak self] in await self?.listen() })
    }

    /// From a `postgres://` URL (see PostgresURL); throws when the URL or password file is unusable.
    public convenience init(url: String, passwordFile: String?, cacheDirectory: String, timeout: Double = 10, logger: Logger) throws {
        self.init(configuration: try PostgresURL.configuration(url, passwordFile: passwordFile), cacheDirectory: cacheDirectory,
                  timeout: timeout, logger: logger)
    }

    deinit { for t in tasks { t.cancel() } }

    public func close() { for t in tasks { t.cancel() } }

    public func changes() -> AsyncStream<StoreChange> { feed.subscribe() }

    /// A run-time setting as the store's own sessions have it (diagnostics, and the tests).
    public func setting(_ name: String) async throws -> String {
        try await run("reading \(name)") {
            for try await v in try await self.client.query("SELECT current_setting(\(name))", logger: self.logger).decode(String.self) { return v }
            throw StoreError.corrupt("no setting \(name)")
        }
    }

    /// LISTEN on its own connection, again after a second or more when it drops.
    private func listen() async {
        var backoff = 1.0
        while !Task.isCancelled {
            do {
                try await client.withConnection { conn in
                    try await conn.listen(on: Self.channel) { notices in
                        backoff = 1
                        // A reconnect may have missed notices: everyone re-reads.
                        self.feed.send(.models)
                        self.feed.send(.jobs)
                        for try await n in notices {
                            self.feed.send(n.payload == "models" ? .models : .jobs)
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                logger.debug("LISTEN \(Self.channel): \(error)")
            }
            try? await Task.sleep(for: .seconds(backoff))
            backoff = min(backoff * 2, 15)
        }
    }

    // MARK: Plumbing

    /// Runs `op` with the store's deadline; database and network errors become `.unavailable`.
    /// The caller is answered at the deadline even when the operation does not heed
    /// cancellation (a peer that stopped answering mid-query): it is cancelled and left behind.
    func run<T: Sendable>(_ what: String, _ op: @escaping @Sendable () async throws -> T) async throws -> T {
        let limit = timeout
        return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, Error>) in
            let once = ResumeOnce(cont)
            let work = Task {
                do { once.resume(with: .success(try await op())) } catch { once.resume(with: .failure(Self.translate(error, what))) }
            }
            Task {
                try? await Task.sleep(for: .seconds(limit))
                if once.resume(with: .failure(StoreError.unavailable("no answer from PostgreSQL within \(Int(limit)) s (\(what))"))) {
                    work.cancel()
                }
            }
        }
    }

    /// The store's own refusals as they are; everything else from the driver is an outage.
    static func translate(_ error: Error, _ what: String) -> Error {
        switch error {
        case let e as StoreError:
            return e
        case let e as PostgresTransactionError:
            // The transaction's own refusal (fenced, corrupt) is what the caller acts on.
            if let inner = e.closureError as? StoreError { return inner }
            let cause = e.beginError ?? e.closureError ?? e.commitError ?? e.rollbackError
            return StoreError.unavailable("\(what): \((cause as? PSQLError).map(describe) ?? "\(cause.map { "\($0)" } ?? "transaction failed")")")
        case let e as PSQLError:
            return StoreError.unavailable("\(what): \(describe(e))")
        case is CancellationError:
            return StoreError.unavailable("\(what): cancelled")
        default:
            return StoreError.unavailable("\(what): \(error)")
        }
    }

    static func describe(_ e: PSQLError) -> String {
        if let m = e.serverInfo?[.message] { return "PostgreSQL: \(m)" }
        return "\(e.code)"
    }

    func tx<T: Sendable>(_ what: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let client = self.client, logger = self.logger
        return try await run(what) { try await client.withTransaction(logger: logger) { conn in try await body(conn) } }
    }

    static func buffer(_ d: Data) -> ByteBuffer { ByteBuffer(data: d) }
    static func data(_ b: ByteBuffer) -> Data { Data(b.readableBytesView) }

    // MARK: Schema

    /// The versioned schema, applied in order under an advisory lock (replicas starting
    /// together migrate once).
    static let migrations: [[PostgresQuery]] = [
        [
            """
            CREATE TABLE files (seq BIGSERIAL, id TEXT PRIMARY KEY, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL,
                filename TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL, status_details TEXT, lines BIGINT,
                max_tokens BIGINT, digest TEXT NOT NULL)
            """,
            "CREATE TABLE file_chunks (file_id TEXT NOT NULL REFERENCES files(id) ON DELETE CASCADE, n INT NOT NULL, bytes BYTEA NOT NULL, PRIMARY KEY (file_id, n))",
            """
            CREATE TABLE jobs (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, body TEXT NOT NULL, owner TEXT,
                epoch BIGINT NOT NULL DEFAULT 0, lease_until TIMESTAMPTZ, requested TEXT)
            """,
            "CREATE INDEX jobs_by_status ON jobs (status, seq)",
            """
            CREATE TABLE events (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL, created_at BIGINT NOT NULL,
                level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT, step BIGINT)
            """,
            "CREATE INDEX events_by_job ON events (job_id, seq)",
            """
            CREATE TABLE checkpoints (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, fine_tuning_job_id TEXT NOT NULL,
                created_at BIGINT NOT NULL, step_number BIGINT NOT NULL, metrics TEXT NOT NULL, fine_tuned_model_checkpoint TEXT NOT NULL)
            """,
            "CREATE INDEX checkpoints_by_job ON checkpoints (fine_tuning_job_id, seq)",
            "CREATE TABLE run_files (job_id TEXT NOT NULL, name TEXT NOT NULL, step BIGINT NOT NULL, bytes BYTEA NOT NULL, PRIMARY KEY (job_id, name))",
            "CREATE TABLE models (name TEXT PRIMARY KEY, job_id TEXT NOT NULL, step BIGINT, digest TEXT NOT NULL, created_at BIGINT NOT NULL)",
            "CREATE TABLE model_files (name TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE, file TEXT NOT NULL, bytes BYTEA NOT NULL, PRIMARY KEY (name, file))",
        ],
        // 2: stored responses (PostgresResponseStore) and batches (PostgresBatchStore), shared like the rest.
        [
            """
            CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at BIGINT NOT NULL, status TEXT NOT NULL,
                previous_response_id TEXT, body TEXT NOT NULL, input TEXT NOT NULL, node TEXT NOT NULL,
                lease_until TIMESTAMPTZ NOT NULL, cancel_requested BOOLEAN NOT NULL DEFAULT false)
            """,
            "CREATE INDEX responses_by_age ON responses (created_at)",
            "CREATE INDEX responses_unfinished ON responses (node) WHERE status IN ('queued', 'in_progress')",
            """
            CREATE TABLE batches (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, body TEXT NOT NULL,
                node TEXT, lease_until TIMESTAMPTZ)
            """,
            "CREATE INDEX batches_by_status ON batches (status, seq)",
            """
            CREATE TABLE batch_lines (batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE, line BIGINT NOT NULL,
                custom_id TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL, output TEXT, PRIMARY KEY (batch_id, line))
            """,
            "CREATE INDEX batch_lines_by_state ON batch_lines (batch_id, state)",
        ],
    ]

    /// Brings the database's schema up to this version's; refuses a newer one.
    public func migrate() async throws {
        try await tx("migrating the schema") { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(7106011)", logger: self.logger)
            try await conn.query("CREATE TABLE IF NOT EXISTS qwen_serve_schema (version INT NOT NULL)", logger: self.logger)
            var version = 0
            for try await v in try await conn.query("SELECT max(version) FROM qwen_serve_schema", logger: self.logger).decode(Int?.self) {
                version = v ?? 0
            }
            guard version <= Self.migrations.count else {
                throw StoreError.corrupt("the database's schema is version \(version), newer than this qwen-serve's (\(Self.migrations.count)); upgrade this replica")
            }
            for (i, m) in Self.migrations.enumerated() where i >= version {
                for q in m { try await conn.query(q, logger: self.logger) }
                try await conn.query("INSERT INTO qwen_serve_schema (version) VALUES (\(i + 1))", logger: self.logger)
            }
        }
    }

    func notify(_ conn: PostgresConnection, _ what: StoreChange) async throws {
        let payload = what == .models ? "models" : "jobs"
        try await conn.query("SELECT pg_notify(\(Self.channel), \(payload))", logger: logger)
    }

    // MARK: Files

    public func insertFile(_ f: FileObject, content: String) async throws {
        defer { try? FileManager.default.removeItem(atPath: content) }
        let path = content
        try await tx("storing file \(f.id)") { conn in
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            var hasher = SHA256(), n = 0, total = 0
            try await conn.query("""
                INSERT INTO files (id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens, digest)
                VALUES (\(f.id), \(f.bytes), \(f.created_at), \(f.filename), \(f.purpose), \(f.status), \(f.status_details), \(f.lines), \(f.max_tokens), '')
                """, logger: self.logger)
            while let chunk = try handle.read(upToCount: Self.chunkBytes), !chunk.isEmpty {
                chunk.withUnsafeBytes { hasher.update($0) }
                total += chunk.count
                try await conn.query("INSERT INTO file_chunks (file_id, n, bytes) VALUES (\(f.id), \(n), \(Self.buffer(chunk)))", logger: self.logger)
                n += 1
            }
            guard total == f.bytes else { throw StoreError.corrupt("\(path) holds \(total) bytes, not \(f.bytes)") }
            try await conn.query("UPDATE files SET digest = \(SHA256.hex(hasher.finalize())) WHERE id = \(f.id)", logger: self.logger)
        }
    }

    typealias FileRow = (String, Int, Int, String, String, String, String?, Int?, Int?)
    static let fileColumns: PostgresQuery = "SELECT id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens FROM files"

    static func fileObject(_ r: FileRow) -> FileObject {
        FileObject(id: r.0, bytes: r.1, created_at: r.2, filename: r.3, purpose: r.4, status: r.5, status_details: r.6, lines: r.7, max_tokens: r.8)
    }

    public func file(_ id: String) async throws -> FileObject? {
        try await run("reading file \(id)") {
            for try await r in try await self.client.query("SELECT id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens FROM files WHERE id = \(id)", logger: self.logger)
                .decode(FileRow.self) { return Self.fileObject(r) }
            return nil
        }
    }

    public func files(purpose: String?, after: String?, limit: Int, ascending: Bool) async throws -> (items: [FileObject], more: Bool) {
        try await run("listing files") {
            var q: PostgresQuery = "SELECT id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens FROM files WHERE (\(purpose)::text IS NULL OR purpose = \(purpose))"
            if let after {
                q = ascending
                    ? "SELECT id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens FROM files WHERE (\(purpose)::text IS NULL OR purpose = \(purpose)) AND seq > coalesce((SELECT seq FROM files WHERE id = \(after)), -1)"
                    : "SELECT id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens FROM files WHERE (\(purpose)::text IS NULL OR purpose = \(purpose)) AND seq < coalesce((SELECT seq FROM files WHERE id = \(after)), 9223372036854775807)"
            }
            q.sql += " ORDER BY seq \(ascending ? "ASC" : "DESC") LIMIT \(limit + 1)"
            var out: [FileObject] = []
            for try await r in try await self.client.query(q, logger: self.logger).decode(FileRow.self) { out.append(Self.fileObject(r)) }
            return (Array(out.prefix(limit)), out.count > limit)
        }
    }

    public func deleteFile(_ id: String) async throws -> Bool {
        let gone = try await tx("deleting file \(id)") { conn in
            var n = 0
            for try await _ in try await conn.query("DELETE FROM files WHERE id = \(id) RETURNING id", logger: self.logger).decode(String.self) { n += 1 }
            return n > 0
        }
        try? FileManager.default.removeItem(atPath: cacheDirectory + "/\(id)")
        return gone
    }

    /// The bytes, from the cache when a copy of the recorded size is there; else fetched a
    /// chunk at a time into a temporary file, checked against the digest, and renamed into place.
    public func fileContent(_ id: String) async throws -> String {
        guard let f = try await file(id) else { throw StoreError.corrupt("file \(id) is not recorded") }
        let path = cacheDirectory + "/\(id)"
        if let a = try? FileManager.default.attributesOfItem(atPath: path), (a[.size] as? Int) == f.bytes { return path }
        try FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        let tmp = path + ".part-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard FileManager.default.createFile(atPath: tmp, contents: nil, attributes: [.posixPermissions: 0o600]),
              let out = FileHandle(forWritingAtPath: tmp) else { throw StoreError.corrupt("cannot write \(tmp)") }
        defer { try? out.close(); try? FileManager.default.removeItem(atPath: tmp) }
        let digest: String = try await run("reading the bytes of \(id)") {
            var expected = ""
            for try await d in try await self.client.query("SELECT digest FROM files WHERE id = \(id)", logger: self.logger).decode(String.self) { expected = d }
            var hasher = SHA256(), n = 0
            // A chunk per query: a large file never sits whole in memory.
            while true {
                var got: ByteBuffer?
                for try await b in try await self.client.query("SELECT bytes FROM file_chunks WHERE file_id = \(id) AND n = \(n)", logger: self.logger)
                    .decode(ByteBuffer.self) { got = b }
                guard let b = got else { break }
                b.withUnsafeReadableBytes { hasher.update($0) }
                try out.write(contentsOf: b.readableBytesView)
                n += 1
            }
            let d = SHA256.hex(hasher.finalize())
            guard d == expected else { throw StoreError.corrupt("the bytes of \(id) do not match their recorded digest") }
            return d
        }
        _ = digest
        try out.synchronize()
        guard rename(tmp, path) == 0 else { throw StoreError.corrupt("cannot rename into \(path)") }
        return path
    }

    // MARK: Jobs

    static func insertEvents(_ conn: PostgresConnection, _ events: [JobEvent], logger: Logger) async throws {
        for e in events {
            try await conn.query("""
                INSERT INTO events (id, job_id, created_at, level, message, type, data, step)
                VALUES (\(e.id), \(e.job_id), \(e.created_at), \(e.level), \(e.message), \(e.type), \(e.data), \(e.step))
                """, logger: logger)
        }
    }

    public func insert(_ job: FineTuningJob, events: [JobEvent]) async throws {
        let body = try SQLiteFineTuningStore.encode(job)
        try await tx("creating job \(job.id)") { conn in
            try await conn.query("INSERT INTO jobs (id, status, body) VALUES (\(job.id), \(job.status.rawValue), \(body))", logger: self.logger)
            try await Self.insertEvents(conn, events, logger: self.logger)
            try await self.notify(conn, .jobs)
        }
    }

    public func job(_ id: String) async throws -> FineTuningJob? {
        let body: String? = try await run("reading job \(id)") {
            for try await b in try await self.client.query("SELECT body FROM jobs WHERE id = \(id)", logger: self.logger).decode(String.self) { return b }
            return nil
        }
        return try body.map(SQLiteFineTuningStore.decode)
    }

    public func jobs(after: String?, limit: Int) async throws -> (items: [FineTuningJob], more: Bool) {
        let rows: [String] = try await run("listing jobs") {
            let q: PostgresQuery = after == nil
                ? "SELECT body FROM jobs ORDER BY seq DESC LIMIT \(limit + 1)"
                : "SELECT body FROM jobs WHERE seq < coalesce((SELECT seq FROM jobs WHERE id = \(after)), 9223372036854775807) ORDER BY seq DESC LIMIT \(limit + 1)"
            var out: [String] = []
            for try await b in try await self.client.query(q, logger: self.logger).decode(String.self) { out.append(b) }
            return out
        }
        return (try rows.prefix(limit).map(SQLiteFineTuningStore.decode), rows.count > limit)
    }

    public func jobs(status: Set<JobStatus>) async throws -> [FineTuningJob] {
        let list = status.map(\.rawValue)
        let rows: [String] = try await run("listing jobs") {
            var out: [String] = []
            for try await b in try await self.client.query("SELECT body FROM jobs WHERE status = ANY(\(list)) ORDER BY seq", logger: self.logger)
                .decode(String.self) { out.append(b) }
            return out
        }
        return try rows.map(SQLiteFineTuningStore.decode)
    }

    public func transition(_ id: String, from: Set<JobStatus>, event: String?,
                           _ change: @escaping @Sendable (inout FineTuningJob) -> Void) async throws -> FineTuningJob? {
        try await tx("changing job \(id)") { conn in
            var body: String?
            for try await b in try await conn.query("SELECT body FROM jobs WHERE id = \(id) FOR UPDATE", logger: self.logger).decode(String.self) { body = b }
            guard let body else { return nil }
            var job = try SQLiteFineTuningStore.decode(body)
            guard from.contains(job.status) else { return job }
            change(&job)
            try await conn.query("UPDATE jobs SET status = \(job.status.rawValue), body = \(try SQLiteFineTuningStore.encode(job)), requested = NULL WHERE id = \(id)",
                                 logger: self.logger)
            if let event { try await Self.insertEvents(conn, [JobEvents.make(id, event)], logger: self.logger) }
            try await self.notify(conn, .jobs)
            return job
        }
    }

    public func request(_ action: JobAction, job id: String) async throws {
        try await tx("asking job \(id) to \(action.rawValue)") { conn in
            try await conn.query("UPDATE jobs SET requested = \(action.rawValue) WHERE id = \(id) AND status = 'running'", logger: self.logger)
            try await self.notify(conn, .jobs)
        }
    }

    public func events(job: String, after: String?, limit: Int) async throws -> (items: [JobEvent], more: Bool) {
        try await run("listing events") {
            let q: PostgresQuery = """
                SELECT seq, id, job_id, created_at, level, message, type, data, step FROM events WHERE job_id = \(job)
                AND seq < coalesce((SELECT seq FROM events WHERE id = \(after)), 9223372036854775807) ORDER BY seq DESC LIMIT \(limit + 1)
                """
            var out: [JobEvent] = []
            for try await r in try await self.client.query(q, logger: self.logger).decode((Int64, String, String, Int, String, String, String, String?, Int?).self) {
                out.append(JobEvent(seq: r.0, id: r.1, job_id: r.2, created_at: r.3, level: r.4, message: r.5, type: r.6, data: r.7, step: r.8))
            }
            return (Array(out.prefix(limit)), out.count > limit)
        }
    }

    public func checkpoints(job: String, after: String?, limit: Int) async throws -> (items: [JobCheckpoint], more: Bool) {
        try await run("listing checkpoints") {
            let q: PostgresQuery = """
                SELECT seq, id, fine_tuning_job_id, created_at, step_number, metrics, fine_tuned_model_checkpoint FROM checkpoints
                WHERE fine_tuning_job_id = \(job) AND seq < coalesce((SELECT seq FROM checkpoints WHERE id = \(after)), 9223372036854775807)
                ORDER BY seq DESC LIMIT \(limit + 1)
                """
            var out: [JobCheckpoint] = []
            for try await r in try await self.client.query(q, logger: self.logger).decode((Int64, String, String, Int, Int, String, String).self) {
                out.append(JobCheckpoint(seq: r.0, id: r.1, fine_tuning_job_id: r.2, created_at: r.3, step_number: r.4, metrics: r.5,
                                         fine_tuned_model_checkpoint: r.6))
            }
            return (Array(out.prefix(limit)), out.count > limit)
        }
    }

    // MARK: The runner

    public func claim(node: String, lease: Double, takeOver: Bool) async throws -> JobClaim? {
        try await tx("claiming a job") { conn in
            while true {
                var row: (String, String, String?, Int64, String?)?
                for try await r in try await conn.query("""
                    SELECT id, body, owner, epoch, requested FROM jobs
                    WHERE status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < now() OR (\(takeOver) AND owner = \(node))))
                    ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
                    """, logger: self.logger).decode((String, String, String?, Int64, String?).self) { row = r }
                guard let r = row else { return nil }
                var job = try SQLiteFineTuningStore.decode(r.1)
                let id = r.0
                if let asked = r.4.flatMap(JobAction.init(rawValue:)) {
                    JobEvents.stopped(&job, by: asked)
                    try await conn.query("""
                        UPDATE jobs SET status = \(job.status.rawValue), body = \(try SQLiteFineTuningStore.encode(job)), owner = NULL,
                        lease_until = NULL, requested = NULL, epoch = epoch + 1 WHERE id = \(id)
                        """, logger: self.logger)
                    try await Self.insertEvents(conn, [JobEvents.make(id, asked == .cancel ? "Fine-tuning job cancelled" : "Fine-tuning job paused")],
                                                logger: self.logger)
                    try await self.notify(conn, .jobs)
                    continue
                }
                let previous = job.status == .running ? r.2 : nil
                let epoch = r.3 + 1
                job.status = .running
                var saved = 0
                for try await s in try await conn.query("SELECT max(step) FROM run_files WHERE job_id = \(id)", logger: self.logger).decode(Int?.self) {
                    saved = s ?? 0
                }
                try await conn.query("DELETE FROM events WHERE job_id = \(id) AND type = 'metrics' AND step > \(saved)", logger: self.logger)
                try await conn.query("""
                    UPDATE jobs SET status = 'running', body = \(try SQLiteFineTuningStore.encode(job)), owner = \(node), epoch = \(epoch),
                    lease_until = now() + make_interval(secs => \(lease)), requested = NULL WHERE id = \(id)
                    """, logger: self.logger)
                try await self.notify(conn, .jobs)
                return JobClaim(job: job, epoch: epoch, node: node, previousNode: previous)
            }
        }
    }

    /// Inside a transaction: locks the job row and checks the claim still holds it.
    func fence(_ conn: PostgresConnection, _ c: JobClaim) async throws {
        var ok = false
        for try await (epoch, status) in try await conn.query("SELECT epoch, status FROM jobs WHERE id = \(c.job.id) FOR UPDATE", logger: logger)
            .decode((Int64, String).self) { ok = epoch == c.epoch && status == JobStatus.running.rawValue }
        guard ok else { throw StoreError.fenced(job: c.job.id) }
    }

    public func renew(_ c: JobClaim, lease: Double) async throws -> JobAction? {
        try await tx("renewing the lease of \(c.job.id)") { conn in
            try await self.fence(conn, c)
            var asked: String?
            for try await r in try await conn.query("""
                UPDATE jobs SET lease_until = now() + make_interval(secs => \(lease)) WHERE id = \(c.job.id) RETURNING requested
                """, logger: self.logger).decode(String?.self) { asked = r }
            return asked.flatMap(JobAction.init(rawValue:))
        }
    }

    public func update(_ c: JobClaim, _ job: FineTuningJob, events: [JobEvent]) async throws {
        let body = try SQLiteFineTuningStore.encode(job)
        try await tx("saving job \(job.id)") { conn in
            try await self.fence(conn, c)
            if job.status == .running {
                try await conn.query("UPDATE jobs SET body = \(body) WHERE id = \(job.id)", logger: self.logger)
            } else {
                try await conn.query("""
                    UPDATE jobs SET status = \(job.status.rawValue), body = \(body), owner = NULL, lease_until = NULL, requested = NULL WHERE id = \(job.id)
                    """, logger: self.logger)
                try await self.notify(conn, .jobs)
            }
            try await Self.insertEvents(conn, events, logger: self.logger)
        }
    }

    func putModel(_ conn: PostgresConnection, _ m: StoredModel, files: [String: Data]) async throws {
        try await conn.query("DELETE FROM models WHERE name = \(m.name)", logger: logger)
        try await conn.query("INSERT INTO models (name, job_id, step, digest, created_at) VALUES (\(m.name), \(m.job), \(m.step), \(m.digest), \(m.created_at))",
                             logger: logger)
        for (f, d) in files {
            try await conn.query("INSERT INTO model_files (name, file, bytes) VALUES (\(m.name), \(f), \(Self.buffer(d)))", logger: logger)
        }
        try await notify(conn, .models)
    }

    public func saveCheckpoint(_ c: JobClaim, step: Int, runFiles: [String: Data], checkpoint: JobCheckpoint?,
                               adapter: [String: Data], events: [JobEvent]) async throws {
        try await tx("saving a checkpoint of \(c.job.id)") { conn in
            try await self.fence(conn, c)
            try await conn.query("DELETE FROM run_files WHERE job_id = \(c.job.id)", logger: self.logger)
            for (name, d) in runFiles {
                try await conn.query("INSERT INTO run_files (job_id, name, step, bytes) VALUES (\(c.job.id), \(name), \(step), \(Self.buffer(d)))",
                                     logger: self.logger)
            }
            if let k = checkpoint {
                try await conn.query("DELETE FROM checkpoints WHERE fine_tuned_model_checkpoint = \(k.fine_tuned_model_checkpoint)", logger: self.logger)
                try await conn.query("""
                    INSERT INTO checkpoints (id, fine_tuning_job_id, created_at, step_number, metrics, fine_tuned_model_checkpoint)
                    VALUES (\(k.id), \(k.fine_tuning_job_id), \(k.created_at), \(k.step_number), \(k.metrics), \(k.fine_tuned_model_checkpoint))
                    """, logger: self.logger)
                try await self.putModel(conn, StoredModel(name: k.fine_tuned_model_checkpoint, job: c.job.id, step: step,
                                                          digest: AdapterDigest.of(adapter), created_at: k.created_at), files: adapter)
            }
            try await Self.insertEvents(conn, events, logger: self.logger)
        }
    }

    public func runState(job: String) async throws -> (step: Int, files: [String: Data])? {
        try await run("reading the run state of \(job)") {
            var step: Int?, files: [String: Data] = [:]
            for try await (name, s, b) in try await self.client.query("SELECT name, step, bytes FROM run_files WHERE job_id = \(job)", logger: self.logger)
                .decode((String, Int, ByteBuffer).self) {
                step = s
                files[name] = Self.data(b)
            }
            return step.map { ($0, files) }
        }
    }

    public func finish(_ c: JobClaim, _ job: FineTuningJob, resultFile: (FileObject, Data)?, model: String,
                       adapter: [String: Data], events: [JobEvent]) async throws {
        let body = try SQLiteFineTuningStore.encode(job)
        try await tx("finishing job \(job.id)") { conn in
            try await self.fence(conn, c)
            if let (f, d) = resultFile {
                var h = SHA256()
                d.withUnsafeBytes { h.update($0) }
                try await conn.query("""
                    INSERT INTO files (id, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens, digest)
                    VALUES (\(f.id), \(f.bytes), \(f.created_at), \(f.filename), \(f.purpose), \(f.status), \(f.status_details), \(f.lines), \(f.max_tokens), \(SHA256.hex(h.finalize())))
                    """, logger: self.logger)
                try await conn.query("INSERT INTO file_chunks (file_id, n, bytes) VALUES (\(f.id), 0, \(Self.buffer(d)))", logger: self.logger)
            }
            try await self.putModel(conn, StoredModel(name: model, job: job.id, step: nil, digest: AdapterDigest.of(adapter),
                                                      created_at: job.finished_at ?? JobEvents.now()), files: adapter)
            try await conn.query("""
                UPDATE jobs SET status = \(job.status.rawValue), body = \(body), owner = NULL, lease_until = NULL, requested = NULL WHERE id = \(job.id)
                """, logger: self.logger)
            try await conn.query("DELETE FROM run_files WHERE job_id = \(job.id)", logger: self.logger)
            try await Self.insertEvents(conn, events, logger: self.logger)
            try await self.notify(conn, .jobs)
        }
    }

    public func release(_ c: JobClaim, _ job: FineTuningJob, events: [JobEvent]) async throws {
        var j = job
        j.status = .queued
        let body = try SQLiteFineTuningStore.encode(j)
        try await tx("handing back job \(job.id)") { conn in
            try await self.fence(conn, c)
            try await conn.query("UPDATE jobs SET status = 'queued', body = \(body), owner = NULL, lease_until = NULL WHERE id = \(job.id)", logger: self.logger)
            try await Self.insertEvents(conn, events, logger: self.logger)
            try await self.notify(conn, .jobs)
        }
    }

    // MARK: Models

    public func models() async throws -> [StoredModel] {
        try await run("listing models") {
            var out: [StoredModel] = []
            for try await r in try await self.client.query("SELECT name, job_id, step, digest, created_at FROM models ORDER BY created_at, name", logger: self.logger)
                .decode((String, String, Int?, String, Int).self) {
                out.append(StoredModel(name: r.0, job: r.1, step: r.2, digest: r.3, created_at: r.4))
            }
            return out
        }
    }

    public func modelFiles(_ name: String) async throws -> [String: Data]? {
        try await run("reading model \(name)") {
            var exists = false
            for try await _ in try await self.client.query("SELECT 1 FROM models WHERE name = \(name)", logger: self.logger).decode(Int32.self) { exists = true }
            guard exists else { return nil }
            var out: [String: Data] = [:]
            for try await (f, b) in try await self.client.query("SELECT file, bytes FROM model_files WHERE name = \(name)", logger: self.logger)
                .decode((String, ByteBuffer).self) { out[f] = Self.data(b) }
            return out
        }
    }

    public func deleteModel(_ name: String) async throws -> Bool {
        try await tx("deleting model \(name)") { conn in
            var n = 0
            for try await _ in try await conn.query("DELETE FROM models WHERE name = \(name) RETURNING name", logger: self.logger).decode(String.self) { n += 1 }
            try await conn.query("DELETE FROM checkpoints WHERE fine_tuned_model_checkpoint = \(name)", logger: self.logger)
            if n > 0 { try await self.notify(conn, .models) }
            return n > 0
        }
    }
}
