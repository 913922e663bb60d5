import Foundation
import QwenFormats
import Logging
import QwenEngine
import QwenTraining

/// Fine-tuning jobs on the serving engine's thread, a piece at a time between inference steps
/// (Engine.interleaved). This side only trains: the JobRunner (an async task) claims a job from
/// the store, prepares its run and hands it over; what the training produces — progress,
/// checkpoints, the result — goes into an outbox the runner writes to the store under its
/// claim. So the engine never waits on the database, and a run whose claim is lost (fenced)
/// or whose database is out of reach stops or pauses without writing anything.
public final class JobManager: InterleavedWork, @unchecked Sendable {
    public let store: any FineTuningStore
    let baseName: String
    let logger = Logger(label: "qwen-serve.fine-tuning")
    /// Memory a job may plan for (default: what the kernel says is available).
    public var memoryLimit: Int?
    /// Pokes the runner when the outbox fills.
    var poke: @Sendable () -> Void = {}

    /// A run ready to train, with the claim it trains under.
    struct Prepared {
        var claim: JobClaim
        var run: TrainingRun
        var started: Date
        var firstStep: Int
    }

    /// What the runner tells the active run.
    enum Order { case pause, cancel, abandon, release }

    /// What the training produced, for the runner to write (in order).
    enum Outgoing {
        case progress(JobClaim, FineTuningJob, [JobEvent])
        case checkpoint(JobClaim, step: Int, runFiles: [String: Data], checkpoint: JobCheckpoint, adapter: [String: Data], [JobEvent])
        /// Paused, cancelled or failed: the job leaves the runner.
        case stopped(JobClaim, FineTuningJob, [JobEvent])
        case finished(JobClaim, FineTuningJob, metricsCSV: Data, adapter: [String: Data])
        case released(JobClaim, FineTuningJob, [JobEvent])
    }

    private let lock = NSLock()
    private var handoff: Prepared?
    private var order: (epoch: Int64, order: Order)?
    private var outbox: [Outgoing] = []
    private var suspended = false
    /// The claim being trained (set when handed over, cleared when the job leaves).
    private var current: JobClaim?
    // Engine thread only.
    private var active: Prepared?

    public init(store: any FineTuningStore, baseName: String) {
        self.store = store
        self.baseName = baseName
    }

    // MARK: The runner's side

    /// idle, training (holds a job) or suspended (holds one, its database out of reach).
    public var runnerState: String {
        lock.withLock { current == nil ? "idle" : suspended ? "suspended" : "training" }
    }

    /// The claim this replica is running, if any.
    var claim: JobClaim? { lock.withLock { current } }

    func hand(_ p: Prepared) {
        lock.withLock {
            handoff = p
            current = p.claim
        }
    }

    func tell(_ o: Order, epoch: Int64) {
        lock.withLock { if current?.epoch == epoch { order = (epoch, o) } }
    }

    /// The database is out of reach (training waits) or back.
    func suspend(_ s: Bool) { lock.withLock { suspended = s } }

    func peekOutbox() -> Outgoing? { lock.withLock { outbox.first } }
    func popOutbox() { lock.withLock { _ = outbox.removeFirst() } }

    /// The claim was lost: nothing more of it is written, and the run (if still here) stops.
    func fenced(epoch: Int64) {
        lock.withLock {
            outbox.removeAll { Self.epoch($0) == epoch }
            if current?.epoch == epoch {
                order = (epoch, .abandon)
                if handoff?.claim.epoch == epoch { handoff = nil; current = nil }
            }
        }
    }

    static func epoch(_ o: Outgoing) -> Int64 {
        switch o {
        case .progress(let c, _, _), .checkpoint(let c, _, _, _, _, _), .stopped(let c, _, _), .finished(let c, _, _, _), .released(let c, _, _):
            return c.epoch
        }
    }

    private func send(_ o: Outgoing, leaving: Bool = false) {
        lock.withLock {
            outbox.append(o)
            if leaving { current = nil }
        }
        poke()
    }

    // MARK: The engine's side

    /// A run to take over, an order for the active one, or a step to train — unless the
    /// database is out of reach or the runner is far behind writing.
    public var hasWork: Bool {
        if active == nil { return lock.withLock { handoff != nil } }
        return lock.withLock { order != nil || (!suspended && outbox.count < 256) }
    }

    public func runPiece() {
        if active == nil {
            active = lock.withLock {
                defer { handoff = nil }
                return handoff
            }
            return
        }
        guard let a = active else { return }
        if let o = lock.withLock({ () -> Order? in
            defer { order = nil }
            return order?.epoch == a.claim.epoch ? order?.order : nil
        }) {
            stop(a, o)
            return
        }
        do {
            if try a.run.advance() { finish() }
        } catch {
            fail(code: "training_failed", message: "\(error)")
        }
    }

    /// SIGTERM, after the engine stopped: checkpoint the running job and hand it back; the
    /// runner writes both before the process ends.
    public func shutdown() {
        if active == nil { active = lock.withLock { handoff } }
        guard let a = active else { return }
        stop(a, .release)
    }

    private func stop(_ a: Prepared, _ o: Order) {
        if o == .pause || o == .release {
            // While still active: the save's callback sends the checkpoint ahead of the stop.
            do { try a.run.checkpointCompleted() } catch {
                active = nil
                fail(a, code: "checkpoint_failed", message: "could not save a checkpoint to \(o == .pause ? "pause" : "stop"): \(error)")
                return
            }
        }
        active = nil
        var job = a.claim.job
        switch o {
        case .abandon:
            lock.withLock { if current?.epoch == a.claim.epoch { current = nil } }
            logger.warning("fine-tuning job \(job.id): this replica's claim ran out; another runs it now")
        case .pause, .release:
            job.step = a.run.completed
            if o == .pause {
                job.status = .paused
                send(.stopped(a.claim, job, [JobEvents.make(job.id, "Fine-tuning job paused at step \(a.run.completed)")]), leaving: true)
            } else {
                send(.released(a.claim, job, [JobEvents.make(job.id, "The server on \(a.claim.node) is stopping: checkpointed at step \(a.run.completed); the job resumes from there")]),
                     leaving: true)
            }
        case .cancel:
            job.status = .cancelled
            job.finished_at = JobEvents.now()
            send(.stopped(a.claim, job, [JobEvents.make(job.id, "Fine-tuning job cancelled")]), leaving: true)
        }
    }

    private func fail(code: String, message: String) {
        guard let a = active else { return }
        active = nil
        fail(a, code: code, message: message)
    }

    private func fail(_ a: Prepared, code: String, message: String) {
        var j = a.claim.job
        j.status = .failed
        j.error = .init(code: code, message: message)
        j.finished_at = JobEvents.now()
        j.estimated_finish = nil
        send(.stopped(a.claim, j, [JobEvents.make(j.id, "Fine-tuning job failed: \(message)", level: "error")]), leaving: true)
        logger.error("fine-tuning job \(j.id) failed: \(message)")
    }

    /// Wires a prepared run's callbacks to the outbox.
    func attach(_ p: Prepared) {
        let id = p.claim.job.id
        p.run.onReport = { [weak self] row in self?.reported(id, row) }
        p.run.onSave = { [weak self] step, file in self?.checkpointed(id, step: step, weights: file) }
    }

    private func reported(_ id: String, _ row: MetricsRow) {
        guard var a = active, a.claim.job.id == id else { return }
        var data: [String: Any] = ["step": row.step, "total_steps": a.run.totalIterations]
        if let v = row.trainLoss { data["train_loss"] = v }
        if let v = row.trainAccuracy { data["train_mean_token_accuracy"] = v }
        if let v = a.run.metrics.last(where: { $0.valLoss != nil }), let vl = v.valLoss {
            data["valid_loss"] = vl
            if let acc = v.valAccuracy { data["valid_mean_token_accuracy"] = acc }
        }
        if let v = row.learningRate { data["learning_rate"] = v }
        if let v = row.tokensPerSecond { data["tokens_per_second"] = v }
        let json = (try? JSONSerialization.data(withJSONObject: data, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) }
        let e = JobEvents.make(id, String(format: "Step %d/%d: training loss=%.4f", row.step, a.run.totalIterations, row.trainLoss ?? .nan),
                               type: "metrics", data: json, step: row.step)
        a.claim.job.step = row.step
        a.claim.job.trained_tokens = a.run.trainedTokens
        let done = Double(row.step - a.firstStep)
        if done > 0 {
            let perStep = Date().timeIntervalSince(a.started) / done
            a.claim.job.estimated_finish = JobEvents.now() + Int(perStep * Double(a.run.totalIterations - row.step))
        }
        active = a
        send(.progress(a.claim, a.claim.job, [e]))
    }

    /// A checkpoint: the files a resume needs and the adapter at that step (served as a
    /// model), read now — the next save replaces them.
    private func checkpointed(_ id: String, step: Int, weights: String) {
        guard let a = active, a.claim.job.id == id else { return }
        let name = Self.modelName(a.claim.job, base: baseName) + ":ckpt-step-\(step)"
        do {
            let dir = a.run.dir
            guard let state = try AdapterFiles.readState(in: dir) else { throw ModelFileError(dir, "no training state after saving") }
            var run: [String: Data] = [:]
            for f in [AdapterFiles.stateFile, state.checkpointFile, "adapter_config.json", "adapters.safetensors"] {
                run[f] = try SafeFile.read(dir + "/" + f, maxBytes: 1 << 34)
            }
            let adapter = ["adapter_config.json": run["adapter_config.json"]!, "adapters.safetensors": try SafeFile.read(weights, maxBytes: 1 << 34)]
            let m = a.run.metrics.last { $0.step == step }
            var metrics: [String: Any] = ["step": step]
            if let v = m?.trainLoss { metrics["train_loss"] = v }
            if let v = a.run.metrics.last(where: { $0.valLoss != nil })?.valLoss { metrics["valid_loss"] = v }
            if let v = m?.trainAccuracy { metrics["train_mean_token_accuracy"] = v }
            let json = String(decoding: try JSONSerialization.data(withJSONObject: metrics, options: [.sortedKeys]), as: UTF8.self)
            let ck = JobCheckpoint(id: IDs.make("ftckpt-"), fine_tuning_job_id: id, created_at: JobEvents.now(), step_number: step,
                                   metrics: json, fine_tuned_model_checkpoint: name)
            var job = a.claim.job
            job.step = step
            send(.checkpoint(a.claim, step: step, runFiles: run, checkpoint: ck, adapter: adapter,
                             [JobEvents.make(id, "Checkpoint saved at step \(step): \(name)")]))
        } catch {
            send(.progress(a.claim, a.claim.job, [JobEvents.make(id, "Checkpoint at step \(step) could not be kept: \(error)", level: "warn")]))
        }
    }

    public static func modelName(_ job: FineTuningJob, base: String) -> String {
        if let s = job.user_provided_suffix, !s.isEmpty { return "ft:\(base):\(s):\(job.id)" }
        return "ft:\(base):\(job.id)"
    }

    private func finish() {
        guard let a = active else { return }
        active = nil
        var job = a.claim.job
        job.trained_tokens = a.run.trainedTokens
        job.step = a.run.completed
        do {
            let dir = a.run.dir
            let adapter = ["adapter_config.json": try SafeFile.read(dir + "/adapter_config.json", maxBytes: 1 << 34),
                           "adapters.safetensors": try SafeFile.read(dir + "/adapters.safetensors", maxBytes: 1 << 34)]
            send(.finished(a.claim, job, metricsCSV: Data(TrainingReport.csv(a.run.metrics).utf8), adapter: adapter), leaving: true)
        } catch {
            fail(a, code: "training_failed", message: "the trained adapter could not be read back: \(error)")
        }
    }

    // MARK: Requests (HTTP handlers)

    public func submitted(_ job: FineTuningJob) async throws {
        var j = job
        j.status = .queued
        try await store.insert(j, events: [
            JobEvents.make(job.id, "Created fine-tuning job: \(job.id)"),
            JobEvents.make(job.id, "Validating training file: \(job.training_file)" + (job.validation_file.map { " and validation file: \($0)" } ?? "")),
            JobEvents.make(job.id, "Files validated, moving job to queued state"),
        ])
        poke()
    }

    /// Cancels or pauses: at once when no runner holds the job, else through the runner that
    /// does (on whichever replica), answering with the outcome once it acted (up to 5 s).
    public func request(_ action: JobAction, job id: String) async throws -> FineTuningJob? {
        let stoppable: Set<JobStatus> = action == .cancel ? [.queued, .paused, .validating_files] : [.queued]
        guard let job = try await store.transition(id, from: stoppable, event: action == .cancel ? "Fine-tuning job cancelled" : "Fine-tuning job paused",
                                                   { JobEvents.stopped(&$0, by: action) }) else { return nil }
        guard job.status == .running else { return job }
        try await store.request(action, job: id)
        // This replica's runner learns of it at its next heartbeat; a second's wait at most.
        poke()
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            try await Task.sleep(for: .milliseconds(25))
            if let j = try await store.job(id), j.status != .running { return j }
        }
        return try await store.job(id)
    }

    public func resume(job id: String) async throws -> FineTuningJob? {
        let j = try await store.transition(id, from: [.paused], event: "Fine-tuning job resumed") { $0.status = .queued }
        poke()
        return j
    }
}
