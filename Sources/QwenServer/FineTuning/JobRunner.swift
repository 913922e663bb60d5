import Foundation
import QwenFormats
import Logging
import QwenModel
import QwenTokenizer
import QwenTraining

/// This replica's side of the job queue, as an async task beside the engine: claims a job when
/// it has none (oldest first; one whose runner's lease ran out counts as queued), prepares its
/// run from the state the store holds (the last checkpoint, the training files) and hands it
/// to the engine; renews the lease every second (which is also how a pause or cancel asked
/// through any replica arrives); writes what the training produces under the claim. A write
/// refused by the fence drops the run; a database out of reach suspends training until a
/// write goes through again.
public final class JobRunner: @unchecked Sendable {
    public struct Settings: Sendable {
        public var node: String
        /// Seconds a claim holds without renewal.
        public var lease: Double = 30
        /// The local working directory of runs (`<state-dir>/jobs`).
        public var jobsDirectory: String
        public init(node: String, lease: Double, jobsDirectory: String) {
            self.node = node
            self.lease = lease
            self.jobsDirectory = jobsDirectory
        }
    }

    let manager: JobManager
    let store: any FineTuningStore
    let settings: Settings
    let model: QwenModel
    let tokenizer: Tokenizer
    let modelPath: String
    let models: FineTunedModels
    let logger = Logger(label: "qwen-serve.fine-tuning")
    private let lock = NSLock()
    private var dirty = true
    private var stopping = false
    private var databaseDown = false
    private var tasks: [Task<Void, Never>] = []

    public init(manager: JobManager, settings: Settings, model: QwenModel, tokenizer: Tokenizer, modelPath: String, models: FineTunedModels) {
        self.manager = manager
        store = manager.store
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.modelPath = modelPath
        self.models = models
    }

    public func start() {
        manager.poke = { [weak self] in self?.wake() }
        let changes = store.changes()
        tasks.append(Task { [weak self] in
            for await c in changes where c == .jobs { self?.wake() }
        })
        tasks.append(Task { [weak self] in await self?.loop() })
    }

    func wake() { lock.withLock { dirty = true } }

    static let trainFormat: TrainingData.Format = {
        var f = TrainingData.Format()
        f.assistantWeights = true
        return f
    }()

    private func loop() async {
        var first = true
        var lastBeat = Date.distantPast
        var backoff = 0.25
        while !Task.isCancelled {
            lock.withLock { dirty = false }
            if await drain() {
                backoff = 0.25
                if manager.claim != nil, Date().timeIntervalSince(lastBeat) >= 1 {
                    lastBeat = Date()
                    await heartbeat()
                }
                if manager.claim == nil, !lock.withLock({ stopping }) {
                    // The first claim after start takes back this node's own jobs at once: the
                    // process that held them is gone (it was this one, before a restart).
                    if await claimNext(takeOver: first) { lastBeat = Date() }
                    first = false
                }
            } else {
                try? await Task.sleep(for: .seconds(backoff))
                backoff = min(backoff * 2, 5)
                continue
            }
            // Up to a second, or until there is something to write or a change was announced.
            for _ in 0..<20 {
                if lock.withLock({ dirty }) || manager.peekOutbox() != nil { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    private func down(_ error: Error) {
        manager.suspend(true)
        if !lock.withLock({ databaseDown }) {
            logger.warning("fine-tuning waits: \(error)")
            lock.withLock { databaseDown = true }
        }
    }

    private func up() {
        manager.suspend(false)
        if lock.withLock({ databaseDown }) {
            logger.notice("fine-tuning goes on: the state database answers again")
            lock.withLock { databaseDown = false }
        }
    }

    /// Writes the outbox in order; false when the database is out of reach.
    private func drain() async -> Bool {
        while let item = manager.peekOutbox() {
            do {
                try await write(item)
                manager.popOutbox()
                up()
            } catch StoreError.fenced {
                manager.fenced(epoch: JobManager.epoch(item))
            } catch {
                down(error)
                return false
            }
        }
        return true
    }

    private func write(_ item: JobManager.Outgoing) async throws {
        switch item {
        case .progress(let c, let job, let events), .stopped(let c, let job, let events):
            try await store.update(c, job, events: events)
        case .released(let c, let job, let events):
            try await store.release(c, job, events: events)
        case .checkpoint(let c, let step, let runFiles, let ck, let adapter, let events):
            try await store.saveCheckpoint(c, step: step, runFiles: runFiles, checkpoint: ck, adapter: adapter, events: events)
            _ = await models.refresh()
        case .finished(let c, var job, let csv, let adapter):
            let name = JobManager.modelName(job, base: manager.baseName)
            // Succeeded only once the model is served under its name (here; the others follow).
            do {
                try await models.install(name: name, files: adapter)
            } catch {
                job.status = .failed
                job.error = .init(code: "model_load_failed", message: "the trained adapter could not be loaded: \(error)")
                job.finished_at = JobEvents.now()
                try await store.update(c, job, events: [JobEvents.make(job.id, "Fine-tuning job failed: \(job.error!.message)", level: "error")])
                return
            }
            let fid = IDs.make("file-")
            let file = FileObject(id: fid, bytes: csv.count, created_at: JobEvents.now(), filename: "step_metrics.csv",
                                  purpose: "fine-tune-results", status: "processed")
            job.result_files = [fid]
            job.status = .succeeded
            job.fine_tuned_model = name
            job.finished_at = JobEvents.now()
            job.estimated_finish = nil
            try await store.finish(c, job, resultFile: (file, csv), model: name, adapter: adapter, events: [
                JobEvents.make(job.id, "New fine-tuned model created: \(name)"),
                JobEvents.make(job.id, "The job has successfully completed"),
            ])
        }
    }

    private func heartbeat() async {
        guard let c = manager.claim else { return }
        do {
            if let asked = try await store.renew(c, lease: settings.lease) {
                manager.tell(asked == .cancel ? .cancel : .pause, epoch: c.epoch)
            }
            up()
        } catch StoreError.fenced {
            manager.fenced(epoch: c.epoch)
        } catch {
            down(error)
        }
    }

    /// Claims and prepares the next job; true when one was handed to the engine.
    private func claimNext(takeOver: Bool) async -> Bool {
        let claim: JobClaim?
        do { claim = try await store.claim(node: settings.node, lease: settings.lease, takeOver: takeOver) } catch {
            down(error)
            return false
        }
        guard var c = claim else { return false }
        do {
            let p = try await prepare(&c)
            manager.attach(p)
            manager.hand(p)
            return true
        } catch StoreError.fenced {
            return false
        } catch let e as StoreError {
            // Out of reach mid-preparation: the lease runs out and a replica (this one, later) claims it again.
            down(e)
            return false
        } catch {
            // Data the run cannot use is the file's fault; anything else (the run directory
            // cannot be made or written) is the run's.
            var job = c.job
            job.status = .failed
            let bad = error as? BadTrainingData
            let message = bad.map { "\($0.error)" } ?? "\(error)"
            job.error = bad.map { .init(code: "invalid_training_file", message: message, param: $0.param) }
                ?? .init(code: "training_failed", message: message)
            job.finished_at = JobEvents.now()
            logger.error("fine-tuning job \(job.id) failed: \(message)")
            try? await store.update(c, job, events: [JobEvents.make(job.id, "Fine-tuning job failed: \(message)", level: "error")])
            return false
        }
    }

    /// The run's directory as the store's last checkpoint left it, its data, and the run.
    private func prepare(_ c: inout JobClaim) async throws -> JobManager.Prepared {
        var job = c.job
        let dir = settings.jobsDirectory + "/\(job.id)/run"
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let local = (try? AdapterFiles.readState(in: dir))?.step
        if let saved = try await store.runState(job: job.id) {
            if local != saved.step {
                try Self.clear(dir)
                for (name, d) in saved.files {
                    guard !name.contains("/"), !name.hasPrefix(".") else { throw StoreError.corrupt("run file name \(name)") }
                    try AtomicFile.write(d, to: dir + "/" + name)
                }
            }
        } else if store.backend != "sqlite" || local == nil {
            // Nothing saved: a fresh start (a directory left by an earlier holder is not the truth).
            // One machine's store before v2 kept its state only here, and it stays.
            try Self.clear(dir)
        }
        let trainPath = try await store.fileContent(job.training_file)
        var validPath: String?
        if let v = job.validation_file { validPath = try await store.fileContent(v) }
        let (model, tokenizer, modelPath, node, validFile) = (self.model, self.tokenizer, self.modelPath, settings.node, validPath)
        let j = job
        let box = try await Offload.run { () -> RunBox in
            var train: [Example], valid: [Example]
            do { train = try TrainingData.load(file: trainPath, tokenizer: tokenizer, format: Self.trainFormat) } catch {
                throw BadTrainingData(error: error, param: "training_file")
            }
            do { valid = try validFile.map { try TrainingData.load(file: $0, tokenizer: tokenizer, format: Self.trainFormat) } ?? [] } catch {
                throw BadTrainingData(error: error, param: "validation_file")
            }
            _ = TrainingData.truncate(&train, maxLength: j.lora.max_seq_length)
            _ = TrainingData.truncate(&valid, maxLength: j.lora.max_seq_length)
            let cfg = Self.config(j, examples: train.count, dir: dir)
            let run = try TrainingRun(config: cfg, pass: try LoRATrainingPass.make(model: model, config: cfg), train: train, valid: valid,
                                      dir: dir, format: .mlx, baseModel: modelPath, fingerprint: "job=\(j.id)", resume: true)
            return RunBox(run: run)
        }
        let run = box.run
        job.status = .running
        job.total_steps = run.totalIterations
        job.step = run.completed
        var message = run.completed > 0 ? "Fine-tuning job resumed on \(node) from step \(run.completed)" : "Fine-tuning job started on \(node)"
        if let prev = c.previousNode, prev != node { message += " (the lease of \(prev) ran out)" }
        c.job = job
        try await store.update(c, job, events: [JobEvents.make(job.id, message)])
        return .init(claim: c, run: run, started: Date(), firstStep: run.completed)
    }

    /// Removes a run directory's files (its adapter copies and state).
    static func clear(_ dir: String) throws {
        let fm = FileManager.default
        for f in try fm.contentsOfDirectory(atPath: dir) { try fm.removeItem(atPath: dir + "/" + f) }
    }

    /// The training configuration a job runs with.
    static func config(_ job: FineTuningJob, examples: Int, dir: String) -> TrainingConfig {
        var c = TrainingConfig()
        c.train = true
        c.seed = job.seed
        c.batchSize = job.hyperparameters.batch_size
        let perEpoch = max(1, examples / job.hyperparameters.batch_size)
        c.iters = perEpoch * job.hyperparameters.n_epochs
        c.learningRate = job.lora.learning_rate
        c.optimizer = .adamw
        c.numLayers = job.lora.num_layers
        c.loraRank = job.lora.rank
        c.loraScale = job.lora.scale
        c.loraDropout = job.lora.dropout
        c.loraKeys = job.lora.target_modules.compactMap { m in Projection.allCases.first { $0.shortName == m || $0.module == m } }
        c.maxSeqLength = job.lora.max_seq_length
        c.stepsPerReport = 1
        c.stepsPerEval = perEpoch
        c.saveEvery = max(1, job.lora.checkpoint_every)
        c.valBatches = -1
        c.adapterPath = dir
        return c
    }

    /// SIGTERM, after the engine stopped: the running job checkpoints and goes back to the
    /// queue (its lease released at once), written before this returns or `grace` runs out.
    public func shutdown(grace: Double) async {
        lock.withLock { stopping = true }
        manager.shutdown()
        let deadline = Date().addingTimeInterval(max(grace, 5))
        while manager.peekOutbox() != nil, Date() < deadline {
            if await drain() == false { try? await Task.sleep(for: .milliseconds(200)) }
        }
        if manager.peekOutbox() != nil { logger.warning("fine-tuning: the state database took too long; the job resumes once its lease runs out") }
        for t in tasks { t.cancel() }
    }
}

/// A run built off the engine thread, handed over once.
private struct RunBox: @unchecked Sendable { let run: TrainingRun }

/// A training or validation file the run cannot use (as opposed to a run that cannot go on).
struct BadTrainingData: Error {
    let error: Error
    let param: String
}
