import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import QwenTokenizer

/// mlx_lm.lora's training run on this engine: the data checked and tokenised up front, the
/// memory planned before the first step, batches by length, validation / report / save at
/// mlx-lm's iterations with its log lines, and checkpoints that `resume` continues exactly.
public final class LoRATrainer {
    public struct TrainError: Error, CustomStringConvertible {
        public let description: String
        public init(_ d: String) { description = d }
    }

    public let config: TrainingConfig
    public let model: LoadedModel
    public let format: AdapterFiles.Format
    /// Where the log lines go (stdout by default), and the progress bar (a terminal's stderr).
    public var output: (String) -> Void = { print($0); fflush(stdout) }
    public var progress: ((Int, Int, Double) -> Void)?
    /// Checked between steps: when it returns true the run checkpoints and stops (a signal).
    public var shouldStop: () -> Bool = { false }
    /// Memory the plan may use (default: what the kernel says is available).
    public var memoryLimit: Int?

    public private(set) var parameters: LoRAParameters!
    public private(set) var metrics: [MetricsRow] = []

    public init(config: TrainingConfig, model: LoadedModel) throws {
        try config.validate()
        self.config = config
        self.model = model
        format = AdapterFiles.Format(rawValue: config.saveFormat) ?? .mlx
    }

    /// Loads `name`.jsonl of the data directory (nil when the file is absent).
    func load(_ name: String, required: Bool) throws -> [Example]? {
        let path = (config.data as NSString).appendingPathComponent(name + ".jsonl")
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: config.data, isDirectory: &isDir), isDir.boolValue else {
            throw TrainError("data: \(config.data) is not a directory holding train.jsonl, valid.jsonl and test.jsonl")
        }
        guard FileManager.default.fileExists(atPath: path) else {
            if required { throw TrainError("\(path): missing (the \(name) set is needed)") }
            return nil
        }
        var f = TrainingData.Format()
        f.maskPrompt = config.maskPrompt
        f.promptFeature = config.promptFeature
        f.completionFeature = config.completionFeature
        f.textFeature = config.textFeature
        f.chatFeature = config.chatFeature
        var ex: [Example]
        do { ex = try TrainingData.load(file: path, tokenizer: model.tokenizer, format: f) } catch { throw TrainError("\(error)") }
        let cut = TrainingData.truncate(&ex, maxLength: config.maxSeqLength)
        if cut > 0 {
            output("[WARNING] \(cut) of \(ex.count) sequences in \(path) are longer than max_seq_length \(config.maxSeqLength) and were cut to it.")
        }
        let untrained = ex.filter { $0.tokens.count <= max($0.offset, 1) }.count
        if untrained == ex.count { throw TrainError("\(path): no example has a token to train (after cutting to max_seq_length \(config.maxSeqLength))") }
        if untrained > 0 { output("[WARNING] \(untrained) examples in \(path) have nothing left to train after the cut; they add no loss.") }
        return ex
    }

    /// Mean loss over up to `count` batches (-1: all) of a set, weighted by trained tokens.
    func evaluate(_ ex: [Example], batches count: Int, pass: LoRATrainingPass) throws -> Double {
        let b = Batches(evaluating: ex, batchSize: config.batchSize, seed: UInt64(config.seed))
        let n = count < 0 ? b.batches.count : min(count, b.batches.count)
        var total = 0.0, tokens = 0
        for k in 0..<n {
            let (loss, t) = try pass.loss(TrainingBatch(ex, b.batch(at: k)))
            total += Double(loss) * Double(t)
            tokens += t
        }
        return tokens > 0 ? total / Double(tokens) : .nan
    }

    /// A fingerprint of what a resumed run must share with the run it continues.
    var settingsFingerprint: String {
        let c = config
        return "model=\(model.path) data=\(c.data) seed=\(c.seed) batch=\(c.batchSize) layers=\(c.numLayers) rank=\(c.loraRank) scale=\(c.loraScale) dropout=\(c.loraDropout) keys=\(c.projections.map(\.shortName)) optimizer=\(c.optimizerSettings) schedule=\(c.schedule) accum=\(c.gradAccumulationSteps) mask=\(c.maskPrompt) max_seq=\(c.maxSeqLength) clip=\(c.maxGradNorm.map { "\($0)" } ?? "none")"
    }

    /// Runs what the configuration asks: training and/or the test set.
    public func run() throws {
        let c = config, m = model.model
        let dir = c.adapterPath
        var pass: LoRATrainingPass?
        if c.train {
            let train = try load("train", required: true)!
            let valid = try load("valid", required: true)!
            guard train.count >= c.batchSize else {
                throw TrainError("\((c.data as NSString).appendingPathComponent("train.jsonl")): \(train.count) examples, fewer than batch_size \(c.batchSize)")
            }
            try prepareDirectory(dir)
            let p = try LoRATrainingPass.make(model: m, config: c)
            parameters = p.parameters
            if let file = c.resumeAdapterFile { try loadWeights(file, into: p.parameters) }
            pass = p
            try trainLoop(p, train: train, valid: valid, dir: dir)
        }
        if c.test {
            let test = try load("test", required: true)!
            let p: LoRATrainingPass
            if let pass { p = pass } else {
                let params: LoRAParameters
                if FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent("adapter_config.json")) {
                    params = try LoRAParameters(adapter: try LoRAAdapter.load(path: dir, config: m.config), config: m.config)
                } else {
                    // No adapter: the base model's test loss (mlx-lm's adapter_path "").
                    params = try LoRAParameters(config: m.config, numLayers: 1, projections: [.q], rank: 1, scale: 0, dropout: 0, seed: 0)
                }
                p = LoRATrainingPass(model: m, parameters: params)
            }
            let loss = try evaluate(test, batches: c.testBatches, pass: p)
            output(String(format: "Test loss %.3f, Test ppl %.3f.", loss, exp(loss)))
        }
    }

    func prepareDirectory(_ dir: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw TrainError("adapter_path \(dir): cannot create it: \(error.localizedDescription)")
        }
        let probe = (dir as NSString).appendingPathComponent(".write-test-\(getpid())")
        guard FileManager.default.createFile(atPath: probe, contents: Data("x".utf8)) else {
            throw TrainError("adapter_path \(dir) is not writable")
        }
        try? FileManager.default.removeItem(atPath: probe)
    }

    /// mlx-lm's resume_adapter_file: an adapters.safetensors (mlx-lm's names) or a PEFT
    /// adapter_model.safetensors whose tensors match this run's LoRA layers.
    func loadWeights(_ file: String, into params: LoRAParameters) throws {
        let f: SafetensorsFile
        do { f = try SafetensorsFile(path: file) } catch { throw TrainError("resume_adapter_file \(file): \(error)") }
        for t in params.tensors {
            let base = "model.layers.\(t.layer).\(t.projection.module)"
            if f.has(base + ".lora_a") {
                let a = try f.floats(base + ".lora_a"), b = try f.floats(base + ".lora_b")
                guard a.count == t.a.count, b.count == t.bt.count else {
                    throw TrainError("resume_adapter_file \(file): \(base) does not have this run's rank \(t.rank)")
                }
                t.a.pointer.update(from: AdapterFiles.transpose(a, rows: t.inDim, cols: t.rank).pointer, count: a.count)
                t.bt.pointer.update(from: b.pointer, count: b.count)
            } else if f.has("base_model.model." + base + ".lora_A.weight") {
                let a = try f.floats("base_model.model." + base + ".lora_A.weight"), b = try f.floats("base_model.model." + base + ".lora_B.weight")
                guard a.count == t.a.count, b.count == t.bt.count else {
                    throw TrainError("resume_adapter_file \(file): \(base) does not have this run's rank \(t.rank)")
                }
                t.a.pointer.update(from: a.pointer, count: a.count)
                t.bt.pointer.update(from: AdapterFiles.transpose(b, rows: t.outDim, cols: t.rank).pointer, count: b.count)
            } else {
                throw TrainError("resume_adapter_file \(file): has no weights for \(base) (this run adapts layers \(params.lowestLayer)… and \(config.projections.map(\.shortName)))")
            }
        }
    }

    func trainLoop(_ pass: LoRATrainingPass, train: [Example], valid: [Example], dir: String) throws {
        let c = config, params = pass.parameters
        let batches = Batches(lengths: train.map(\.tokens.count), batchSize: c.batchSize, seed: UInt64(c.seed))
        // The memory plan: the widest batch and the longest sequence, before the first step.
        let rowsOf = { (idx: [Int]) in idx.reduce(0) { $0 + train[$1].tokens.count - 1 } }
        let widest = batches.batches.map(rowsOf).max() ?? 0
        let validRows = valid.sorted { $0.tokens.count > $1.tokens.count }.prefix(c.batchSize).reduce(0) { $0 + $1.tokens.count - 1 }
        let longest = max(train.map(\.tokens.count).max() ?? 0, valid.map(\.tokens.count).max() ?? 0)
        let planned = pass.plannedBytes(rows: max(widest, validRows), longest: longest)
        let weights = model.model.weights.residentBytes
        let limit = memoryLimit ?? MemoryProbe.availableBytes() ?? Int.max
        output(String(format: "Memory plan: %.2f GB (weights %.2f GB, activations and optimizer %.2f GB; widest batch %d tokens); %.2f GB available.",
                      Double(planned + weights) / 1e9, Double(weights) / 1e9, Double(planned) / 1e9, widest, Double(limit) / 1e9))
        guard planned + weights <= limit else {
            throw TrainError(String(format: "this run needs about %.2f GB but %.2f GB are available: lower batch_size or max_seq_length, set grad_checkpoint, or train fewer layers (num_layers)",
                                    Double(planned + weights) / 1e9, Double(limit) / 1e9))
        }
        output(String(format: "Trainable parameters: %.3f%% (%.3fM/%.3fM)", 100 * Double(params.parameterCount) / Double(model.model.weights.parameterCount),
                      Double(params.parameterCount) / 1e6, Double(model.model.weights.parameterCount) / 1e6))
        let run = try TrainingRun(config: c, pass: pass, train: train, valid: valid, dir: dir, format: format, baseModel: model.path,
                                  fingerprint: settingsFingerprint, resume: c.resume, output: output)
        run.progress = progress
        while !run.isFinished {
            try run.advance()
            if shouldStop(), !run.isFinished, case .start = run.state {
                try run.checkpointCompleted()
                output("Stopped at iteration \(run.completed); `--resume` continues from here.")
                metrics = run.metrics
                return
            }
        }
        metrics = run.metrics
    }
}
