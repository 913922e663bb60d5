import Foundation
import QwenRuntime

/// Where files, fine-tuning jobs, their events, checkpoints, run state and fine-tuned models
/// are kept: SQLite under `--state-dir` for one machine, or PostgreSQL (`--state-db postgres://…`)
/// shared by several replicas. The job manager, the runner and the controllers use only this.
///
/// A job is run by one replica at a time: `claim` takes a queued job (or one whose runner's
/// lease ran out) and bumps its epoch; every write the runner makes carries that claim, and a
/// write whose epoch is no longer the job's is refused with `StoreError.fenced` — so a runner
/// that was paused or cut off past its lease changes nothing afterwards.
public protocol FineTuningStore: Sendable {
    /// "sqlite" or "postgres".
    var backend: String { get }
    /// Changes other replicas (or this one) made: new or deleted models, job requests.
    func changes() -> AsyncStream<StoreChange>

    // MARK: Files

    /// Records an uploaded file and takes its bytes from `content` (moved, or copied into the
    /// database and removed).
    func insertFile(_ f: FileObject, content: String) async throws
    func file(_ id: String) async throws -> FileObject?
    /// Files newest first (or oldest with `ascending`), after the cursor `after`.
    func files(purpose: String?, after: String?, limit: Int, ascending: Bool) async throws -> (items: [FileObject], more: Bool)
    func deleteFile(_ id: String) async throws -> Bool
    /// A local path holding the file's bytes (for PostgreSQL a cached copy, checked against
    /// the recorded size and digest before it is returned).
    func fileContent(_ id: String) async throws -> String

    // MARK: Jobs (API side)

    /// Stores a new job with its first events, in one transaction.
    func insert(_ job: FineTuningJob, events: [JobEvent]) async throws
    func job(_ id: String) async throws -> FineTuningJob?
    /// Jobs newest first, after the job `after`.
    func jobs(after: String?, limit: Int) async throws -> (items: [FineTuningJob], more: Bool)
    /// Jobs in these states, oldest first.
    func jobs(status: Set<JobStatus>) async throws -> [FineTuningJob]
    /// Changes a job that no runner holds, when its status is one of `from` (checked under the
    /// row's lock): returns the job as stored after, changed or not; nil when there is none.
    func transition(_ id: String, from: Set<JobStatus>, event: String?,
                    _ change: @escaping @Sendable (inout FineTuningJob) -> Void) async throws -> FineTuningJob?
    /// Asks the runner of a running job to pause or cancel (it acts within a second or two).
    func request(_ action: JobAction, job id: String) async throws
    func events(job: String, after: String?, limit: Int) async throws -> (items: [JobEvent], more: Bool)
    func checkpoints(job: String, after: String?, limit: Int) async throws -> (items: [JobCheckpoint], more: Bool)

    // MARK: The runner (every write fenced by its claim)

    /// Claims the oldest queued job, or a running one whose lease has expired, for `node`;
    /// with `takeOver`, also a running one that `node` itself held (it restarted).
    func claim(node: String, lease: Double, takeOver: Bool) async throws -> JobClaim?
    /// Extends the lease; returns a pause or cancel asked for meanwhile.
    func renew(_ claim: JobClaim, lease: Double) async throws -> JobAction?
    func update(_ claim: JobClaim, _ job: FineTuningJob, events: [JobEvent]) async throws
    /// The files a resume starts from (training state, optimizer checkpoint, adapter config),
    /// replacing the previous ones, with the checkpoint's adapter published as a model.
    func saveCheckpoint(_ claim: JobClaim, step: Int, runFiles: [String: Data], checkpoint: JobCheckpoint?,
                        adapter: [String: Data], events: [JobEvent]) async throws
    /// The run state last saved for a job, if any.
    func runState(job: String) async throws -> (step: Int, files: [String: Data])?
    /// Success in one transaction: the metrics file, the model, the job and its events.
    func finish(_ claim: JobClaim, _ job: FineTuningJob, resultFile: (FileObject, Data)?, model: String,
                adapter: [String: Data], events: [JobEvent]) async throws
    /// Hands a job back to the queue (SIGTERM, or a replica that cannot run it now).
    func release(_ claim: JobClaim, _ job: FineTuningJob, events: [JobEvent]) async throws

    // MARK: Fine-tuned models

    func models() async throws -> [StoredModel]
    /// The adapter's files (adapter_config.json, adapters.safetensors).
    func modelFiles(_ name: String) async throws -> [String: Data]?
    /// Removes a model (and its checkpoint record when it is one); false when there was none.
    func deleteModel(_ name: String) async throws -> Bool
}

public enum JobAction: String, Sendable { case cancel, pause }

/// A runner's hold on a job: the job as claimed and the epoch its writes carry.
public struct JobClaim: Sendable {
    public var job: FineTuningJob
    public var epoch: Int64
    public var node: String
    /// The node whose lease ran out, when the claim took the job over from it.
    public var previousNode: String?
}

/// A fine-tuned model (a job's result or one of its checkpoints) every replica serves.
public struct StoredModel: Sendable, Equatable {
    public var name: String
    public var job: String
    public var step: Int?
    /// SHA-256 of the adapter's files (see `AdapterDigest`), the key of replicas' caches.
    public var digest: String
    public var created_at: Int
}

public enum StoreChange: Sendable, Equatable {
    case models
    case jobs
}

public enum StoreError: Error, CustomStringConvertible, Equatable {
    /// The job is no longer this runner's: another claimed it after the lease ran out.
    case fenced(job: String)
    /// The database cannot be reached (or answered with a server error).
    case unavailable(String)
    case corrupt(String)

    public var description: String {
        switch self {
        case .fenced(let j): return "job \(j) is held by another runner now (its lease ran out here); this runner's writes are refused"
        case .unavailable(let m): return "the state database is unavailable: \(m)"
        case .corrupt(let m): return "the state database holds something unexpected: \(m)"
        }
    }
}

/// The digest of an adapter's files: SHA-256 over each file's name, length and bytes, in name order.
public enum AdapterDigest {
    public static func of(_ files: [String: Data]) -> String {
        var h = SHA256()
        for name in files.keys.sorted() {
            let d = files[name]!
            h.update(Array(name.utf8))
            withUnsafeBytes(of: UInt64(d.count).littleEndian) { h.update($0) }
            d.withUnsafeBytes { h.update($0) }
        }
        return SHA256.hex(h.finalize())
    }
}
