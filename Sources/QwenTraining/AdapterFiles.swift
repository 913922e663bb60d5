import Foundation
import QwenFormats
import QwenKernels
import QwenModel

/// Writes trained LoRA parameters as adapters that mlx-lm, PEFT and `qwen-serve serve
/// --adapter` load as they are, and the checkpoints a run resumes from. Every file is written
/// atomically (temporary name, fsync, rename), so an interrupted run never leaves a half-written
/// adapter: the previous file stays whole.
public enum AdapterFiles {
    public enum Format: String, Sendable { case mlx, peft }

    /// The weights file of each format.
    public static func weightsFile(_ f: Format) -> String { f == .mlx ? "adapters.safetensors" : "adapter_model.safetensors" }

    /// The tensors of `params` under each format's names and layout: mlx-lm stores lora_a
    /// [in × r] and lora_b [r × out] (Aᵀ and Bᵀ), PEFT lora_A [r × in] and lora_B [out × r].
    static func tensors(_ params: LoRAParameters, _ f: Format) -> [SafetensorsWriter.Tensor] {
        params.tensors.flatMap { t -> [SafetensorsWriter.Tensor] in
            let base = "model.layers.\(t.layer).\(t.projection.module)"
            switch f {
            case .mlx:
                return [
                    .init(name: base + ".lora_a", shape: [t.inDim, t.rank]) { transpose(t.a, rows: t.rank, cols: t.inDim) },
                    .init(name: base + ".lora_b", shape: [t.rank, t.outDim]) { copy(t.bt) },
                ]
            case .peft:
                return [
                    .init(name: "base_model.model." + base + ".lora_A.weight", shape: [t.rank, t.inDim]) { copy(t.a) },
                    .init(name: "base_model.model." + base + ".lora_B.weight", shape: [t.outDim, t.rank]) {
                        transpose(t.bt, rows: t.rank, cols: t.outDim)
                    },
                ]
            }
        }
    }

    static func copy(_ b: FloatBuffer) -> FloatBuffer {
        let c = FloatBuffer(count: b.count)
        c.pointer.update(from: b.pointer, count: b.count)
        return c
    }

    static func transpose(_ m: FloatBuffer, rows: Int, cols: Int) -> FloatBuffer {
        let t = FloatBuffer(count: m.count)
        for r in 0..<rows { for c in 0..<cols { t[c * rows + r] = m[r * cols + c] } }
        return t
    }

    /// Writes the weights to `dir/file` (default: the format's own name).
    public static func writeWeights(_ params: LoRAParameters, format: Format, to dir: String, file: String? = nil) throws -> String {
        let path = (dir as NSString).appendingPathComponent(file ?? weightsFile(format))
        try SafetensorsWriter.write(tensors(params, format), dtype: .f32, to: path,
                                    metadata: format == .mlx ? ["format": "mlx"] : ["format": "pt"])
        return path
    }

    /// Writes adapter_config.json: mlx-lm's (every training setting, as mlx_lm.lora saves
    /// them) or PEFT's (what PeftModel.from_pretrained needs: alpha = scale · rank, the
    /// target modules, and the layers when not all of them are adapted).
    public static func writeConfig(_ params: LoRAParameters, format: Format, config: TrainingConfig, baseModel: String,
                                   layers: Int, to dir: String) throws {
        let json: [String: Any]
        switch format {
        case .mlx:
            json = config.mlxAdapterConfig
        case .peft:
            let adapted = Array(Set(params.tensors.map(\.layer))).sorted()
            var c: [String: Any] = [
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": params.rank, "lora_alpha": Double(params.scale) * Double(params.rank),
                "lora_dropout": Double(params.dropout), "target_modules": Array(Set(params.tensors.map(\.projection.shortName))).sorted(),
                "bias": "none", "fan_in_fan_out": false, "use_rslora": false, "use_dora": false, "init_lora_weights": true,
                "inference_mode": true, "base_model_name_or_path": baseModel, "modules_to_save": NSNull(),
            ]
            c["layers_to_transform"] = adapted.count == layers ? NSNull() : adapted as Any
            json = c
        }
        let data = try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.write(data, to: (dir as NSString).appendingPathComponent("adapter_config.json"))
    }

    // MARK: Checkpoints

    /// What a run needs to continue exactly where it stopped.
    public struct State: Codable, Sendable, Equatable {
        public var version = 1
        /// Iterations done (the next is step + 1), and optimizer updates done.
        public var step: Int
        public var optimizerStep: Int
        public var trainedTokens: Int
        /// The checkpoint file holding parameters and optimizer moments.
        public var checkpointFile: String
        /// A fingerprint of the settings that must not change across a resume.
        public var settings: String
        public var metrics: [MetricsRow]
    }

    public static let stateFile = "training_state.json"

    /// Writes `NNNNNNN_checkpoint.safetensors` (parameters and moments) and then the state that
    /// names it; the previous checkpoint stays until the new state is in place.
    public static func writeCheckpoint(_ params: LoRAParameters, optimizer: Optimizer, state: State, to dir: String) throws {
        var ts: [SafetensorsWriter.Tensor] = []
        for (i, t) in params.tensors.enumerated() {
            let key = "\(t.layer).\(t.projection.shortName)"
            ts.append(.init(name: "param.\(key).a", shape: [t.rank, t.inDim]) { copy(t.a) })
            ts.append(.init(name: "param.\(key).bt", shape: [t.rank, t.outDim]) { copy(t.bt) })
            for (j, (m, v)) in zip(optimizer.m[(2 * i)..<(2 * i + 2)], optimizer.v[(2 * i)..<(2 * i + 2)]).enumerated() {
                ts.append(.init(name: "moment.\(key).\(j).m", shape: [m.count]) { copy(m) })
                if v.count > 0 { ts.append(.init(name: "moment.\(key).\(j).v", shape: [v.count]) { copy(v) }) }
            }
        }
        try SafetensorsWriter.write(ts, dtype: .f32, to: (dir as NSString).appendingPathComponent(state.checkpointFile),
                                    metadata: ["format": "qwen-serve-checkpoint", "step": "\(state.step)"])
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try enc.encode(state), to: (dir as NSString).appendingPathComponent(stateFile))
    }

    public struct CheckpointError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Reads the state in `dir`, if there is one.
    public static func readState(in dir: String) throws -> State? {
        let path = (dir as NSString).appendingPathComponent(stateFile)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do {
            return try JSONDecoder().decode(State.self, from: SafeFile.read(path, maxBytes: 64 << 20))
        } catch {
            throw CheckpointError(description: "\(path): not a training state this version wrote: \(error)")
        }
    }

    /// Loads a checkpoint's parameters and moments into `params` and `optimizer`.
    public static func restore(_ params: LoRAParameters, optimizer: Optimizer, state: State, from dir: String) throws {
        let path = (dir as NSString).appendingPathComponent(state.checkpointFile)
        guard !state.checkpointFile.contains("/") else { throw CheckpointError(description: "\(path): bad checkpoint name") }
        let file = try SafetensorsFile(path: path)
        func load(_ name: String, into b: FloatBuffer) throws {
            let v = try file.floats(name)
            guard v.count == b.count else {
                throw CheckpointError(description: "\(path): \(name) has \(v.count) values, this run needs \(b.count)")
            }
            b.pointer.update(from: v.pointer, count: b.count)
        }
        for (i, t) in params.tensors.enumerated() {
            let key = "\(t.layer).\(t.projection.shortName)"
            try load("param.\(key).a", into: t.a)
            try load("param.\(key).bt", into: t.bt)
            for j in 0..<2 {
                try load("moment.\(key).\(j).m", into: optimizer.m[2 * i + j])
                if optimizer.v[2 * i + j].count > 0 { try load("moment.\(key).\(j).v", into: optimizer.v[2 * i + j]) }
            }
        }
        optimizer.restore(step: state.optimizerStep)
    }
}

/// One row of metrics.csv.
public struct MetricsRow: Codable, Sendable, Equatable {
    public var step: Int
    public var trainLoss: Double?
    public var valLoss: Double?
    public var learningRate: Double?
    /// Trained tokens per second (mlx-lm's Tokens/sec), and all tokens the model ran per second.
    public var tokensPerSecond: Double?
    public var inputTokensPerSecond: Double?
    /// Share of trained targets the model ranked first (over the report window, and validation).
    public var trainAccuracy: Double?
    public var valAccuracy: Double?

    public init(step: Int, trainLoss: Double? = nil, valLoss: Double? = nil, learningRate: Double? = nil,
                tokensPerSecond: Double? = nil, inputTokensPerSecond: Double? = nil, trainAccuracy: Double? = nil,
                valAccuracy: Double? = nil) {
        self.trainAccuracy = trainAccuracy
        self.valAccuracy = valAccuracy
        self.step = step
        self.trainLoss = trainLoss
        self.valLoss = valLoss
        self.learningRate = learningRate
        self.tokensPerSecond = tokensPerSecond
        self.inputTokensPerSecond = inputTokensPerSecond
    }
}
