import Foundation
import QwenModel
import Yams

/// mlx_lm.lora's configuration: the same keys, meanings and defaults, read from a YAML file
/// and from flags of the same names (a flag wins over the file, the file over the defaults).
/// Keys this trainer adds: `save_format` (mlx or peft) and `resume` (continue the run saved
/// in adapter_path).
public struct TrainingConfig: Sendable, Equatable {
    public var model = "default"
    public var train = false
    public var test = false
    public var data = "data"
    public var fineTuneType = "lora"
    public var optimizer = OptimizerSettings.Kind.adam
    /// optimizer_config: per optimizer name, its keyword arguments.
    public var optimizerConfig: [String: [String: Double]] = [:]
    public var seed = 0
    public var numLayers = 16
    public var batchSize = 4
    public var iters = 1000
    public var valBatches = 25
    public var learningRate = 1e-5
    public var stepsPerReport = 10
    public var stepsPerEval = 200
    public var resumeAdapterFile: String?
    public var adapterPath = "adapters"
    public var saveEvery = 100
    public var testBatches = 500
    public var maxSeqLength = 2048
    public var gradCheckpoint = false
    public var gradAccumulationSteps = 1
    public var lrSchedule: LearningRateSchedule?
    public var loraKeys: [Projection]?
    public var loraRank = 8
    public var loraScale: Double = 20
    public var loraDropout: Double = 0
    public var maskPrompt = false
    public var promptFeature = "prompt"
    public var completionFeature = "completion"
    public var textFeature = "text"
    public var chatFeature = "messages"
    public var saveFormat = "mlx"
    /// Clip the gradients' global norm to this before each update (ours; nil: no clipping).
    public var maxGradNorm: Double?
    public var resume = false

    public init() {}

    public struct ConfigError: Error, CustomStringConvertible {
        public let description: String
        public init(_ d: String) { description = d }
    }

    /// Keys mlx_lm.lora accepts that have no effect here (reporting, cache tuning, remote code).
    static let ignoredKeys: Set<String> = ["clear_cache_threshold", "report_to", "project_name", "trust_remote_code", "config", "wandb"]

    /// Reads a YAML file of mlx_lm.lora's keys over `self`. An unknown key, or a value of the
    /// wrong kind, is an error naming the file and the key.
    public mutating func apply(yamlFile path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("\(path): cannot read the configuration file")
        }
        guard data.count <= 1 << 20 else { throw ConfigError("\(path): larger than 1 MiB; not a training configuration") }
        guard let text = String(data: data, encoding: .utf8) else { throw ConfigError("\(path): not UTF-8 text") }
        let parsed: Any?
        do { parsed = try Yams.load(yaml: text) } catch { throw ConfigError("\(path): not valid YAML: \(error)") }
        guard let map = parsed as? [String: Any] else {
            if parsed == nil { return }
            throw ConfigError("\(path): the configuration must be a mapping of mlx_lm.lora keys")
        }
        for (k, v) in map.sorted(by: { $0.key < $1.key }) {
            do { try set(k, v) } catch let e as ConfigError { throw ConfigError("\(path): \(e.description)") }
        }
    }

    /// Sets one key from a YAML (or flag) value.
    public mutating func set(_ key: String, _ value: Any) throws {
        func int() throws -> Int {
            if let i = value as? Int { return i }
            if let d = value as? Double, d == d.rounded(), abs(d) < 1e15 { return Int(d) }
            if let s = value as? String, let i = Int(s) { return i }
            throw ConfigError("\(key) must be an integer, not \(describe(value))")
        }
        func double() throws -> Double {
            if let d = value as? Double, d.isFinite { return d }
            if let i = value as? Int { return Double(i) }
            if let s = value as? String, let d = Double(s), d.isFinite { return d }
            throw ConfigError("\(key) must be a number, not \(describe(value))")
        }
        func bool() throws -> Bool {
            if let b = value as? Bool { return b }
            throw ConfigError("\(key) must be true or false, not \(describe(value))")
        }
        func string() throws -> String {
            if let s = value as? String { return s }
            throw ConfigError("\(key) must be a string, not \(describe(value))")
        }
        func optionalString() throws -> String? { value is NSNull ? nil : try string() }
        switch key {
        case "model": model = try string()
        case "train": train = try bool()
        case "test": test = try bool()
        case "data": data = try string()
        case "fine_tune_type":
            let t = try string()
            guard t == "lora" else {
                throw ConfigError(["dora", "full"].contains(t)
                    ? "fine_tune_type \(t) is not supported by this trainer; use lora"
                    : "fine_tune_type must be lora (dora and full are not supported here), not \(t)")
            }
            fineTuneType = t
        case "use_dora":
            if try bool() { throw ConfigError("use_dora: DoRA is not supported by this trainer; use fine_tune_type: lora") }
        case "optimizer":
            let name = try string().lowercased()
            guard let k = OptimizerSettings.Kind(rawValue: name) else {
                throw ConfigError("optimizer must be adam, adamw or sgd (muon and adafactor are not supported here), not \(name)")
            }
            optimizer = k
        case "optimizer_config":
            guard let m = value as? [String: Any] else { throw ConfigError("optimizer_config must be a mapping of optimizer names") }
            for (name, cfg) in m {
                guard ["adam", "adamw", "sgd", "muon", "adafactor"].contains(name) else {
                    throw ConfigError("optimizer_config: unknown optimizer \(name)")
                }
                if cfg is NSNull { continue }
                guard let args = cfg as? [String: Any] else { throw ConfigError("optimizer_config.\(name) must be a mapping") }
                var out: [String: Double] = [:]
                for (k, v) in args {
                    let allowed: Set<String> = name == "sgd" ? ["weight_decay", "momentum", "dampening", "nesterov"]
                        : ["betas", "eps", "weight_decay", "bias_correction"]
                    guard allowed.contains(k) else { throw ConfigError("optimizer_config.\(name): unknown key \(k)") }
                    switch (k, v) {
                    case ("betas", let a as [Any]):
                        guard a.count == 2, let b0 = (a[0] as? Double) ?? (a[0] as? Int).map(Double.init),
                              let b1 = (a[1] as? Double) ?? (a[1] as? Int).map(Double.init), (0..<1).contains(b0), (0..<1).contains(b1) else {
                            throw ConfigError("optimizer_config.\(name).betas must be two numbers in [0, 1)")
                        }
                        out["beta1"] = b0
                        out["beta2"] = b1
                    case ("bias_correction", let b as Bool), ("nesterov", let b as Bool):
                        if k == "nesterov", b { throw ConfigError("optimizer_config.sgd.nesterov is not supported here") }
                        out[k] = b ? 1 : 0
                    default:
                        guard let d = (v as? Double) ?? (v as? Int).map(Double.init), d.isFinite, d >= 0 else {
                            throw ConfigError("optimizer_config.\(name).\(k) must be a number ≥ 0")
                        }
                        if k == "dampening", d != 0 { throw ConfigError("optimizer_config.sgd.dampening is not supported here") }
                        out[k] = d
                    }
                }
                optimizerConfig[name] = out
            }
        case "seed": seed = try int()
        case "num_layers", "lora_layers": numLayers = try int()
        case "batch_size": batchSize = try int()
        case "iters": iters = try int()
        case "val_batches": valBatches = try int()
        case "learning_rate": learningRate = try double()
        case "steps_per_report": stepsPerReport = try int()
        case "steps_per_eval": stepsPerEval = try int()
        case "resume_adapter_file": resumeAdapterFile = try optionalString()
        case "adapter_path", "adapter_file":
            adapterPath = try string()
        case "save_every": saveEvery = try int()
        case "test_batches": testBatches = try int()
        case "max_seq_length": maxSeqLength = try int()
        case "grad_checkpoint": gradCheckpoint = try bool()
        case "grad_accumulation_steps": gradAccumulationSteps = try int()
        case "lr_schedule":
            if value is NSNull { lrSchedule = nil; return }
            guard let m = value as? [String: Any] else { throw ConfigError("lr_schedule must be a mapping with name and arguments") }
            for k in m.keys where !["name", "arguments", "warmup", "warmup_init"].contains(k) {
                throw ConfigError("lr_schedule: unknown key \(k)")
            }
            guard let name = m["name"] as? String, let kind = LearningRateSchedule.Kind(rawValue: name), kind != .constant else {
                throw ConfigError("lr_schedule.name must be one of cosine_decay, linear_schedule, exponential_decay, step_decay")
            }
            guard let args = m["arguments"] as? [Any] else { throw ConfigError("lr_schedule.arguments must be a list of numbers") }
            let nums = try args.map { a -> Double in
                if let d = a as? Double { return d }
                if let i = a as? Int { return Double(i) }
                throw ConfigError("lr_schedule.arguments must be numbers, not \(describe(a))")
            }
            let warmup = try (m["warmup"]).map { w -> Int in
                guard let i = w as? Int, i >= 0 else { throw ConfigError("lr_schedule.warmup must be a whole number ≥ 0") }
                return i
            } ?? 0
            let wi = (m["warmup_init"] as? Double) ?? (m["warmup_init"] as? Int).map(Double.init) ?? 0
            do { lrSchedule = try LearningRateSchedule(kind: kind, arguments: nums, warmup: warmup, warmupInit: wi) } catch {
                throw ConfigError(error.description)
            }
        case "lora_parameters":
            guard let m = value as? [String: Any] else { throw ConfigError("lora_parameters must be a mapping") }
            for (k, v) in m {
                switch k {
                case "rank":
                    guard let r = v as? Int else { throw ConfigError("lora_parameters.rank must be an integer") }
                    loraRank = r
                case "scale", "alpha":
                    if k == "alpha" { throw ConfigError("lora_parameters uses scale, not alpha (mlx-lm's convention: scale = alpha / rank)") }
                    guard let d = (v as? Double) ?? (v as? Int).map(Double.init), d.isFinite else {
                        throw ConfigError("lora_parameters.scale must be a number")
                    }
                    loraScale = d
                case "dropout":
                    guard let d = (v as? Double) ?? (v as? Int).map(Double.init), d.isFinite else {
                        throw ConfigError("lora_parameters.dropout must be a number")
                    }
                    loraDropout = d
                case "keys":
                    guard let keys = v as? [String], !keys.isEmpty else { throw ConfigError("lora_parameters.keys must be a list of module names") }
                    loraKeys = try keys.map { key in
                        guard let p = Projection(module: key) ?? Projection.allCases.first(where: { $0.shortName == key }) else {
                            throw ConfigError("lora_parameters.keys: the model has no module \(key) (it has \(Projection.allCases.map(\.module).joined(separator: ", ")))")
                        }
                        return p
                    }
                default: throw ConfigError("lora_parameters: unknown key \(k)")
                }
            }
        case "mask_prompt": maskPrompt = try bool()
        case "prompt_feature": promptFeature = try string()
        case "completion_feature": completionFeature = try string()
        case "text_feature": textFeature = try string()
        case "chat_feature": chatFeature = try string()
        case "hf_dataset": throw ConfigError("hf_dataset is not supported here: download the data as train.jsonl / valid.jsonl / test.jsonl and pass its directory as data")
        case "save_format":
            let f = try string()
            guard ["mlx", "peft"].contains(f) else { throw ConfigError("save_format must be mlx or peft, not \(f)") }
            saveFormat = f
        case "resume": resume = try bool()
        case "max_grad_norm", "grad_clip":
            if value is NSNull { maxGradNorm = nil; return }
            let d = try double()
            guard d > 0 else { throw ConfigError("\(key) must be a positive number") }
            maxGradNorm = d
        case let k where Self.ignoredKeys.contains(k): return
        default: throw ConfigError("unknown key \(key)")
        }
    }

    /// Checks values against each other and their ranges (after file and flags are applied).
    public func validate() throws {
        func positive(_ v: Int, _ name: String) throws { guard v >= 1 else { throw ConfigError("\(name) must be at least 1, got \(v)") } }
        try positive(batchSize, "batch_size")
        try positive(iters, "iters")
        try positive(stepsPerReport, "steps_per_report")
        try positive(stepsPerEval, "steps_per_eval")
        try positive(saveEvery, "save_every")
        try positive(gradAccumulationSteps, "grad_accumulation_steps")
        guard maxSeqLength >= 2 else { throw ConfigError("max_seq_length must be at least 2, got \(maxSeqLength)") }
        guard loraRank >= 1 else { throw ConfigError("lora_parameters.rank must be at least 1, got \(loraRank)") }
        guard loraDropout >= 0, loraDropout < 1 else { throw ConfigError("lora_parameters.dropout must be in [0, 1), got \(loraDropout)") }
        guard learningRate.isFinite, learningRate >= 0 else { throw ConfigError("learning_rate must be a number ≥ 0") }
        guard valBatches >= -1, testBatches >= -1 else { throw ConfigError("val_batches and test_batches must be -1 (all) or more") }
        guard numLayers == -1 || numLayers >= 1 else { throw ConfigError("num_layers must be -1 (all) or at least 1, got \(numLayers)") }
        guard train || test else { throw ConfigError("nothing to do: pass --train and/or --test") }
    }

    /// The optimizer's settings: its defaults under optimizer_config's keys for it.
    public var optimizerSettings: OptimizerSettings {
        let c = optimizerConfig[optimizer.rawValue] ?? [:]
        return OptimizerSettings(kind: optimizer,
                                 betas: [Float(c["beta1"] ?? 0.9), Float(c["beta2"] ?? 0.999)],
                                 eps: Float(c["eps"] ?? 1e-8),
                                 weightDecay: c["weight_decay"].map(Float.init),
                                 biasCorrection: (c["bias_correction"] ?? 0) != 0,
                                 momentum: Float(c["momentum"] ?? 0))
    }

    /// The learning-rate schedule: lr_schedule, or learning_rate throughout.
    public var schedule: LearningRateSchedule { lrSchedule ?? .constant(learningRate) }

    /// The projections trained: lora_parameters.keys, or (as mlx-lm) every linear layer of a block.
    public var projections: [Projection] { loraKeys ?? Projection.allCases }

    /// As mlx-lm writes it to adapter_config.json: every setting, keys sorted.
    public var mlxAdapterConfig: [String: Any] {
        var lora: [String: Any] = ["rank": loraRank, "scale": loraScale, "dropout": loraDropout]
        lora["keys"] = projections.map(\.module)
        var optConfig: [String: Any] = [:]
        for (k, v) in optimizerConfig {
            var m: [String: Any] = [:]
            for (a, b) in v where a != "beta1" && a != "beta2" { m[a] = a == "bias_correction" ? (b != 0) as Any : b as Any }
            if let b1 = v["beta1"], let b2 = v["beta2"] { m["betas"] = [b1, b2] }
            optConfig[k] = m
        }
        var schedule: Any = NSNull()
        if let s = lrSchedule {
            schedule = ["name": s.kind.rawValue, "arguments": s.arguments, "warmup": s.warmup, "warmup_init": s.warmupInit] as [String: Any]
        }
        return [
            "model": model, "train": train, "test": test, "data": data, "fine_tune_type": fineTuneType,
            "optimizer": optimizer.rawValue, "optimizer_config": optConfig, "seed": seed, "num_layers": numLayers,
            "batch_size": batchSize, "iters": iters, "val_batches": valBatches, "learning_rate": learningRate,
            "steps_per_report": stepsPerReport, "steps_per_eval": stepsPerEval,
            "resume_adapter_file": resumeAdapterFile.map { $0 as Any } ?? NSNull(), "adapter_path": adapterPath,
            "save_every": saveEvery, "test_batches": testBatches, "max_seq_length": maxSeqLength,
            "grad_checkpoint": gradCheckpoint, "grad_accumulation_steps": gradAccumulationSteps, "lr_schedule": schedule,
            "lora_parameters": lora, "mask_prompt": maskPrompt,
            "max_grad_norm": maxGradNorm.map { $0 as Any } ?? NSNull(),
        ]
    }
}

func describe(_ v: Any) -> String {
    switch v {
    case is NSNull: return "null"
    case let s as String: return "the string \"\(s.prefix(40))\""
    case is [Any]: return "a list"
    case is [String: Any]: return "a mapping"
    default: return "\(v)"
    }
}
