import Foundation
import QwenFormats
import QwenKernels
import QwenModel

/// One training run as a state machine advanced a piece at a time: validation at mlx-lm's
/// iterations, each training step in the pass's pieces, the optimizer update, reports and
/// checkpoints. `qwen-serve lora` advances it to the end; a fine-tuning job advances it
/// between the serving engine's inference steps. Both produce the same adapter.
public final class TrainingRun {
    public let config: TrainingConfig
    public let pass: LoRATrainingPass
    public let optimizer: Optimizer
    public let dir: String
    public let format: AdapterFiles.Format
    public let baseModel: String
    let train: [Example], valid: [Example]
    let batches: Batches
    let schedule: LearningRateSchedule
    let layers: Int
    let fingerprint: String

    public var output: (String) -> Void = { _ in }
    /// Called after every report (the row just recorded) and every save (step, weights file).
    public var onReport: (MetricsRow) -> Void = { _ in }
    public var onSave: (Int, String) -> Void = { _, _ in }
    public var progress: ((Int, Int, Double) -> Void)?

    public private(set) var metrics: [MetricsRow] = []
    public private(set) var trainedTokens = 0
    /// Iterations done.
    public private(set) var completed = 0
    public var parameters: LoRAParameters { pass.parameters }

    enum State {
        case start(Int)
        case evaluating(Int, index: Int, step: LoRATrainingPass.Step?, loss: Double, tokens: Int, correct: Int, began: Date)
        case training(Int, LoRATrainingPass.Step, began: Date, rows: Int)
        case finished
    }
    var state: State
    var windowLoss = 0.0, windowSteps = 0, windowTokens = 0, windowRows = 0, windowCorrect = 0, windowSeconds = 0.0, runSeconds = 0.0
    var lastRate: Double
    let firstIteration: Int

    public struct RunError: Error, CustomStringConvertible {
        public let description: String
    }

    /// - resume: continue the run saved in `dir` when there is one.
    public init(config c: TrainingConfig, pass: LoRATrainingPass, train: [Example], valid: [Example], dir: String,
                format: AdapterFiles.Format, baseModel: String, fingerprint: String, resume: Bool,
                output: @escaping (String) -> Void = { _ in }) throws {
        config = c
        self.pass = pass
        self.train = train
        self.valid = valid
        self.dir = dir
        self.format = format
        self.baseModel = baseModel
        self.fingerprint = fingerprint
        self.output = output
        layers = pass.model.config.layers
        batches = Batches(lengths: train.map(\.tokens.count), batchSize: c.batchSize, seed: UInt64(c.seed))
        guard !batches.batches.isEmpty else { throw RunError(description: "\(train.count) training examples, fewer than batch_size \(c.batchSize)") }
        schedule = c.schedule
        optimizer = Optimizer(c.optimizerSettings, parameters: pass.parameters.tensors.flatMap(\.parameters))
        var start = 1
        if resume, let saved = try AdapterFiles.readState(in: dir) {
            guard saved.settings == fingerprint else {
                throw RunError(description: "\(dir)/\(AdapterFiles.stateFile): the run saved there used other settings; resume needs the same model, data, seed, batch, LoRA, optimizer and schedule (or a new adapter_path)")
            }
            try AdapterFiles.restore(pass.parameters, optimizer: optimizer, state: saved, from: dir)
            start = saved.step + 1
            trainedTokens = saved.trainedTokens
            metrics = saved.metrics
            completed = saved.step
            output("Resuming at iteration \(start) from \(dir)/\(saved.checkpointFile).")
        } else if resume {
            output("No saved run in \(dir); starting at iteration 1.")
        }
        firstIteration = start
        lastRate = schedule.rate(at: optimizer.step)
        try AdapterFiles.writeConfig(pass.parameters, format: format, config: c, baseModel: baseModel, layers: layers, to: dir)
        state = start <= c.iters ? .start(start) : .finished
        if start > c.iters { output("The run in \(dir) already did its \(c.iters) iterations.") }
    }

    public var isFinished: Bool { if case .finished = state { return true } else { return false } }
    /// Between iterations (no step half done): where stopping loses nothing.
    public var atIterationBoundary: Bool { if case .start = state { return true } else { return false } }
    /// Iterations in the run.
    public var totalIterations: Int { config.iters }
    /// Training examples per epoch in batches.
    public var batchesPerEpoch: Int { batches.batches.count }

    var validBatches: Batches { Batches(evaluating: valid, batchSize: config.batchSize, seed: UInt64(config.seed)) }

    var validCount: Int { config.valBatches < 0 ? validBatches.batches.count : min(config.valBatches, validBatches.batches.count) }

    /// Runs the next piece of work; true once the run is complete (the final adapter saved).
    @discardableResult
    public func advance() throws -> Bool {
        let c = config
        switch state {
        case .finished:
            return true
        case .start(let it):
            if (it == 1 || it % c.stepsPerEval == 0 || it == c.iters) && !valid.isEmpty {
                state = .evaluating(it, index: 0, step: nil, loss: 0, tokens: 0, correct: 0, began: Date())
            } else {
                try beginStep(it)
            }
        case .evaluating(let it, let index, let step, var loss, var tokens, var correct, let began):
            if let step {
                if try step.advance() {
                    let r = step.result
                    loss += Double(r.loss) * Double(r.tokens)
                    tokens += r.tokens
                    correct += step.correct
                    state = .evaluating(it, index: index + 1, step: nil, loss: loss, tokens: tokens, correct: correct, began: began)
                }
            } else if index < validCount {
                let s = try pass.begin(TrainingBatch(valid, validBatches.batch(at: index)), gradientScale: nil)
                state = .evaluating(it, index: index, step: s, loss: loss, tokens: tokens, correct: correct, began: began)
            } else {
                let v = tokens > 0 ? loss / Double(tokens) : .nan
                output(String(format: "Iter %d: Val loss %.3f, Val took %.3fs", it, v, Date().timeIntervalSince(began)))
                record(MetricsRow(step: it, valLoss: v, valAccuracy: tokens > 0 ? Double(correct) / Double(tokens) : nil))
                try beginStep(it)
            }
        case .training(let it, let step, let began, let rows):
            if try step.advance() {
                windowCorrect += step.correct
                try finishStep(it, step.result, seconds: Date().timeIntervalSince(began), rows: rows)
            }
        }
        return isFinished
    }

    func beginStep(_ it: Int) throws {
        pass.dropoutStep = UInt64(it)
        let b = TrainingBatch(train, batches.batch(at: it - 1))
        let s = try pass.begin(b, gradientScale: 1 / Float(config.gradAccumulationSteps))
        state = .training(it, s, began: Date(), rows: b.rows)
    }

    func finishStep(_ it: Int, _ r: (loss: Float, tokens: Int), seconds: Double, rows: Int) throws {
        let c = config, params = pass.parameters
        guard r.loss.isFinite else { throw RunError(description: "iteration \(it): the loss is not finite (\(r.loss)); lower the learning rate") }
        if it % c.gradAccumulationSteps == 0 || it == c.iters {
            if let m = c.maxGradNorm { optimizer.clipGradients(maxNorm: Float(m)) }
            lastRate = schedule.rate(at: optimizer.step)
            optimizer.update(lr: Float(lastRate))
            params.zeroGradients()
        }
        completed = it
        windowSeconds += seconds
        runSeconds += seconds
        windowLoss += Double(r.loss)
        windowSteps += 1
        windowTokens += r.tokens
        windowRows += rows
        trainedTokens += r.tokens
        progress?(it, c.iters, runSeconds / Double(it - firstIteration + 1) * Double(c.iters - it))
        if it % c.stepsPerReport == 0 || it == c.iters {
            // Rates over the training steps only (validation and saving excluded, as mlx-lm counts them).
            let dt = max(windowSeconds, 1e-9)
            let tl = windowLoss / Double(windowSteps)
            output(String(format: "Iter %d: Train loss %.3f, Learning Rate %.3e, It/sec %.3f, Tokens/sec %.3f, Trained Tokens %d, Peak mem %.3f GB",
                          it, tl, lastRate, Double(windowSteps) / dt, Double(windowTokens) / dt, trainedTokens, Double(MemoryProbe.peakResidentBytes()) / 1e9))
            record(MetricsRow(step: it, trainLoss: tl, learningRate: lastRate, tokensPerSecond: Double(windowTokens) / dt,
                              inputTokensPerSecond: Double(windowRows) / dt,
                              trainAccuracy: windowTokens > 0 ? Double(windowCorrect) / Double(windowTokens) : nil))
            onReport(metrics.last!)
            try? TrainingReport.write(metrics, to: dir)
            windowLoss = 0; windowSteps = 0; windowTokens = 0; windowRows = 0; windowCorrect = 0; windowSeconds = 0
        }
        if it == c.iters {
            try save(it)
            try TrainingReport.write(metrics, to: dir)
            output("Saved final weights to \((dir as NSString).appendingPathComponent(AdapterFiles.weightsFile(format))).")
            state = .finished
            return
        }
        if it % c.saveEvery == 0 { try save(it) }
        state = .start(it + 1)
    }

    /// Saves the current adapter, its numbered copy and the checkpoint a resume starts from.
    public func save(_ it: Int) throws {
        let params = pass.parameters
        let adapter = try AdapterFiles.writeWeights(params, format: format, to: dir)
        let name = String(format: "%07d_", it) + AdapterFiles.weightsFile(format)
        let ck = try AdapterFiles.writeWeights(params, format: format, to: dir, file: name)
        let state = AdapterFiles.State(step: it, optimizerStep: optimizer.step, trainedTokens: trainedTokens,
                                       checkpointFile: String(format: "%07d_checkpoint.safetensors", it),
                                       settings: fingerprint, metrics: metrics)
        try AdapterFiles.writeCheckpoint(params, optimizer: optimizer, state: state, to: dir)
        // Keep only the newest optimizer checkpoint (adapters at every save_every stay).
        for f in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        where f.hasSuffix("_checkpoint.safetensors") && f != state.checkpointFile {
            try? FileManager.default.removeItem(atPath: (dir as NSString).appendingPathComponent(f))
        }
        output("Iter \(it): Saved adapter weights to \(adapter) and \(ck).")
        onSave(it, ck)
    }

    /// Stops between steps: checkpoints the last completed iteration (when it has not been
    /// saved already) so a resume continues from there. The step in progress is dropped.
    public func checkpointCompleted() throws {
        guard completed > 0, !isFinished else { return }
        if completed % config.saveEvery != 0 { try save(completed) }
    }

    func record(_ row: MetricsRow) {
        if let i = metrics.lastIndex(where: { $0.step == row.step }) {
            var r = metrics[i]
            r.trainLoss = row.trainLoss ?? r.trainLoss
            r.valLoss = row.valLoss ?? r.valLoss
            r.learningRate = row.learningRate ?? r.learningRate
            r.tokensPerSecond = row.tokensPerSecond ?? r.tokensPerSecond
            r.inputTokensPerSecond = row.inputTokensPerSecond ?? r.inputTokensPerSecond
            r.trainAccuracy = row.trainAccuracy ?? r.trainAccuracy
            r.valAccuracy = row.valAccuracy ?? r.valAccuracy
            metrics[i] = r
        } else {
            metrics.append(row)
        }
    }
}
