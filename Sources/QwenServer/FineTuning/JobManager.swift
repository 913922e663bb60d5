import Foundation
import Logging
import QwenEngine
import QwenFormats
import QwenModel
import QwenTokenizer
import QwenTraining

/// Runs fine-tuning jobs on the serving engine's thread, a piece at a time between inference
/// steps (Engine.interleaved): one job trains at a time, the rest queue in order. Finished
/// jobs' adapters (and each checkpoint's) are loaded into the adapter registry under their
/// model names, at once and again at every start.
public final class JobManager: InterleavedWork, @unchecked Sendable {
    public let store: FineTuningStore
    let model: QwenModel
    let tokenizer: Tokenizer
    let baseName: String
    let modelPath: String
    let adapters: AdapterRegistry
    let logger = Logger(label: "qwen-serve.fine-tuning")
    /// Memory a job may plan for (default: what the kernel says is available).
    public var memoryLimit: Int?

    public enum Action: Sendable { case cancel, pause }
    private let lock = NSLock()
    private var pending: [String: Action] = [:]
    /// Queued jobs, counted beside the store so that the engine can ask `hasWork` after every
    /// step without a database read; startNext re-reads the store and corrects it.
    private var queued = 0
    // Engine thread only.
    private var active: (job: FineTuningJob, run: TrainingRun, started: Date, firstStep: Int)?

    public init(store: FineTuningStore, model: QwenModel, tokenizer: Tokenizer, baseName: String, modelPath: String,
                adapters: AdapterRegistry) {
        self.store = store
        self.model = model
        self.tokenizer = tokenizer
        self.baseName = baseName
        self.modelPath = modelPath
        self.adapters = adapters
    }

    static let trainFormat: TrainingData.Format = {
        var f = TrainingData.Format()
        f.assistantWeights = true
        return f
    }()

    static func now() -> Int { Int(Date().timeIntervalSince1970) }

    func event(_ job: String, _ message: String, level: String = "info", type: String = "message", data: String? = nil) {
        do {
            try store.add(JobEvent(id: IDs.make("ftevent-"), job_id: job, created_at: Self.now(), level: level, message: message,
                                   type: type, data: data))
        } catch { logger.error("job \(job): could not record an event: \(error)") }
    }

    func save(_ job: FineTuningJob) {
        do { try store.update(job) } catch { logger.error("job \(job.id): could not save its state: \(error)") }
    }

    // MARK: Start-up

    /// Serves every finished job's model and checkpoints, and queues the jobs a stop
    /// interrupted (they resume from their last checkpoint). Returns problems to log.
    public func recover() async -> [String] {
        var problems: [String] = []
        do {
            for job in try store.jobs(status: ["succeeded"]) {
                guard let name = job.fine_tuned_model else { continue }
                let dir = store.jobDirectory(job.id) + "/run"
                guard FileManager.default.fileExists(atPath: dir + "/adapter_config.json") else { continue }  // deleted
                do { try await adapters.load(name: name, path: dir, origin: "fine-tune") } catch { problems.append("\(name): \(error)") }
            }
            for c in try store.allCheckpoints() where FileManager.default.fileExists(atPath: c.path + "/adapter_config.json") {
                do { try await adapters.load(name: c.fine_tuned_model_checkpoint, path: c.path, origin: "fine-tune") } catch {
                    problems.append("\(c.fine_tuned_model_checkpoint): \(error)")
                }
            }
            for var job in try store.jobs(status: ["running", "validating_files"]) {
                job.status = "queued"
                save(job)
                event(job.id, "The server restarted; the job resumes from its last checkpoint")
            }
            let q = try store.jobs(status: ["queued"]).count
            lock.withLock { queued = q }
        } catch { problems.append("fine-tuning state: \(error)") }
        return problems
    }

    // MARK: Requests (HTTP threads)

    public func submitted(_ job: FineTuningJob) throws {
        try store.insert(job)
        event(job.id, "Created fine-tuning job: \(job.id)")
        event(job.id, "Validating training file: \(job.training_file)" + (job.validation_file.map { " and validation file: \($0)" } ?? ""))
        var j = job
        j.status = "queued"
        try store.update(j)
        event(job.id, "Files validated, moving job to queued state")
        lock.withLock { queued += 1 }
    }

    /// Cancels or pauses: at once when the job is not training, else at the engine's next piece.
    public func request(_ action: Action, job id: String) throws -> FineTuningJob? {
        guard var job = try store.job(id) else { return nil }
        switch (action, job.status) {
        case (.cancel, "queued"), (.cancel, "paused"), (.cancel, "validating_files"):
            if job.status == "queued" { lock.withLock { queued -= 1 } }
            job.status = "cancelled"
            job.finished_at = Self.now()
            try store.update(job)
            event(id, "Fine-tuning job cancelled")
            return job
        case (.pause, "queued"):
            lock.withLock { queued -= 1 }
            job.status = "paused"
            try store.update(job)
            event(id, "Fine-tuning job paused")
            return job
        case (_, "running"):
            lock.withLock { pending[id] = action }
            // The engine acts between pieces (a fraction of a second); answer with the outcome.
            for _ in 0..<200 {
                if let j = try store.job(id), j.status != "running" { return j }
                usleep(25_000)
            }
            return try store.job(id)
        default:
            return job
        }
    }

    public func resume(job id: String) throws -> FineTuningJob? {
        guard var job = try store.job(id) else { return nil }
        guard job.status == "paused" else { return job }
        job.status = "queued"
        try store.update(job)
        lock.withLock { queued += 1 }
        event(id, "Fine-tuning job resumed")
        return job
    }

    // MARK: The engine's side

    public var hasWork: Bool { lock.withLock { queued > 0 || pending.isEmpty == false } || active != nil }

    public func runPiece() {
        if let a = active, let action = lock.withLock({ pending.removeValue(forKey: a.job.id) }) {
            stopActive(action)
            return
        }
        if active == nil {
            lock.withLock { pending.removeAll() }
            startNext()
            return
        }
        guard let a = active else { return }
        do {
            if try a.run.advance() { finish() }
        } catch {
            fail(a.job, code: "training_failed", message: "\(error)")
        }
    }

    /// SIGTERM: the engine has stopped; checkpoint the running job so the next start resumes it.
    public func shutdown() {
        guard let a = active else { return }
        do {
            try a.run.checkpointCompleted()
            event(a.job.id, "The server is stopping: checkpointed at step \(a.run.completed); the job resumes at the next start")
        } catch {
            event(a.job.id, "The server is stopping and could not checkpoint: \(error)", level: "warn")
        }
        active = nil
    }

    private func stopActive(_ action: Action) {
        guard var a = active else { return }
        active = nil
        if action == .pause {
            do { try a.run.checkpointCompleted() } catch {
                fail(a.job, code: "checkpoint_failed", message: "could not save a checkpoint to pause: \(error)")
                return
            }
            a.job.status = "paused"
            save(a.job)
            event(a.job.id, "Fine-tuning job paused at step \(a.run.completed)")
        } else {
            a.job.status = "cancelled"
            a.job.finished_at = Self.now()
            save(a.job)
            event(a.job.id, "Fine-tuning job cancelled")
        }
    }

    /// Marks a job failed. `onEngine`: called on the engine thread (it may drop the active run);
    /// otherwise only the stored job changes.
    private func fail(_ job: FineTuningJob, code: String, message: String, param: String? = nil, onEngine: Bool = true) {
        var j = (try? store.job(job.id)) ?? job
        if onEngine, active?.job.id == job.id { active = nil }
        j.status = "failed"
        j.error = .init(code: code, message: message, param: param)
        j.finished_at = Self.now()
        save(j)
        event(j.id, "Fine-tuning job failed: \(message)", level: "error")
        logger.error("fine-tuning job \(j.id) failed: \(message)")
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

    private func startNext() {
        let next: FineTuningJob?
        do { next = try store.jobs(status: ["queued"]).first } catch {
            logger.error("fine-tuning queue: \(error)")
            lock.withLock { queued = 0 }
            return
        }
        guard var job = next else {
            lock.withLock { queued = 0 }
            return
        }
        lock.withLock { queued = max(0, queued - 1) }
        do {
            let dir = store.jobDirectory(job.id) + "/run"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var train = try TrainingData.load(file: store.filePath(job.training_file), tokenizer: tokenizer, format: Self.trainFormat)
            var valid = try job.validation_file.map { try TrainingData.load(file: store.filePath($0), tokenizer: tokenizer, format: Self.trainFormat) } ?? []
            _ = TrainingData.truncate(&train, maxLength: job.lora.max_seq_length)
            _ = TrainingData.truncate(&valid, maxLength: job.lora.max_seq_length)
            let c = Self.config(job, examples: train.count, dir: dir)
            try c.validate()
            let params = try LoRAParameters(config: model.config, numLayers: c.numLayers, projections: c.projections, rank: c.loraRank,
                                            scale: Float(c.loraScale), dropout: Float(c.loraDropout), seed: UInt64(c.seed))
            let pass = LoRATrainingPass(model: model, parameters: params)
            pass.dropoutSeed = UInt64(c.seed)
            let resuming = (try? AdapterFiles.readState(in: dir)) != nil
            let run = try TrainingRun(config: c, pass: pass, train: train, valid: valid, dir: dir, format: .mlx, baseModel: modelPath,
                                      fingerprint: "job=\(job.id)", resume: true)
            let id = job.id
            run.onReport = { [weak self] row in self?.reported(id, row) }
            run.onSave = { [weak self] step, file in self?.checkpointed(id, step: step, weights: file) }
            job.status = "running"
            job.total_steps = c.iters
            job.step = run.completed
            save(job)
            event(job.id, resuming ? "Fine-tuning job resumed at step \(run.completed + 1)" : "Fine-tuning job started")
            active = (job, run, Date(), run.completed)
        } catch {
            fail(job, code: "invalid_training_file", message: "\(error)", param: "training_file")
        }
    }

    private func reported(_ id: String, _ row: MetricsRow) {
        guard var a = active, a.job.id == id else { return }
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
        event(id, String(format: "Step %d/%d: training loss=%.4f", row.step, a.run.totalIterations, row.trainLoss ?? .nan), type: "metrics", data: json)
        a.job.step = row.step
        a.job.trained_tokens = a.run.trainedTokens
        let done = Double(row.step - a.firstStep)
        if done > 0 {
            let perStep = Date().timeIntervalSince(a.started) / done
            a.job.estimated_finish = Self.now() + Int(perStep * Double(a.run.totalIterations - row.step))
        }
        active = a
        save(a.job)
    }

    /// A checkpoint becomes its own adapter directory (written under a temporary name and
    /// renamed, so it is never seen half-written), recorded and served by name.
    private func checkpointed(_ id: String, step: Int, weights: String) {
        guard let a = active, a.job.id == id else { return }
        let name = Self.modelName(a.job, base: baseName) + ":ckpt-step-\(step)"
        let dir = store.jobDirectory(id) + "/checkpoints/step-\(step)"
        let tmp = dir + ".tmp-\(getpid())"
        do {
            let fm = FileManager.default
            try? fm.removeItem(atPath: tmp)
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            // Copied by reading and writing: FileManager.copyItem would fchown, which the
            // systemd unit's syscall filter (~@privileged) forbids.
            try Self.copy(weights, to: tmp + "/adapters.safetensors")
            try Self.copy(a.run.dir + "/adapter_config.json", to: tmp + "/adapter_config.json")
            try? fm.removeItem(atPath: dir)
            guard rename(tmp, dir) == 0 else { throw ModelFileError(dir, "cannot rename into place") }
            let m = a.run.metrics.last { $0.step == step }
            var metrics: [String: Any] = ["step": step]
            if let v = m?.trainLoss { metrics["train_loss"] = v }
            if let v = a.run.metrics.last(where: { $0.valLoss != nil })?.valLoss { metrics["valid_loss"] = v }
            if let v = m?.trainAccuracy { metrics["train_mean_token_accuracy"] = v }
            let json = String(decoding: try JSONSerialization.data(withJSONObject: metrics, options: [.sortedKeys]), as: UTF8.self)
            _ = try store.deleteCheckpoints(model: name)
            try store.add(JobCheckpoint(id: IDs.make("ftckpt-"), fine_tuning_job_id: id, created_at: Self.now(), step_number: step,
                                        metrics: json, fine_tuned_model_checkpoint: name, path: dir))
            let adapters = self.adapters
            Task { _ = try? await adapters.load(name: name, path: dir, origin: "fine-tune") }
        } catch {
            event(id, "Checkpoint at step \(step) could not be kept: \(error)", level: "warn")
        }
    }

    static func copy(_ from: String, to: String) throws {
        try AtomicFile.write(try SafeFile.read(from, maxBytes: 1 << 34), to: to)
    }

    public static func modelName(_ job: FineTuningJob, base: String) -> String {
        if let s = job.user_provided_suffix, !s.isEmpty { return "ft:\(base):\(s):\(job.id)" }
        return "ft:\(base):\(job.id)"
    }

    private func finish() {
        guard var a = active else { return }
        active = nil
        let name = Self.modelName(a.job, base: baseName)
        let dir = a.run.dir
        // The result file: the run's metrics, as a file of purpose fine-tune-results.
        do {
            let fid = IDs.make("file-")
            let csv = Data(TrainingReport.csv(a.run.metrics).utf8)
            try AtomicFile.write(csv, to: store.filePath(fid))
            try store.insert(FileObject(id: fid, bytes: csv.count, created_at: Self.now(), filename: "step_metrics.csv",
                                        purpose: "fine-tune-results", status: "processed"))
            a.job.result_files = [fid]
        } catch {
            event(a.job.id, "The metrics file could not be written: \(error)", level: "warn")
        }
        a.job.trained_tokens = a.run.trainedTokens
        a.job.step = a.run.completed
        save(a.job)
        let job = a.job
        let adapters = self.adapters
        // Succeeded only once the model is served under its name.
        Task { [weak self] in
            guard let self else { return }
            do {
                try await adapters.load(name: name, path: dir, origin: "fine-tune")
                var j = job
                j.status = "succeeded"
                j.fine_tuned_model = name
                j.finished_at = Self.now()
                j.estimated_finish = nil
                self.save(j)
                self.event(j.id, "New fine-tuned model created: \(name)")
                self.event(j.id, "The job has successfully completed")
            } catch {
                self.fail(job, code: "model_load_failed", message: "the trained adapter could not be loaded: \(error)", onEngine: false)
            }
        }
    }
}
