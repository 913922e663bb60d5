import Foundation
import QwenFormats

/// Every hyper-parameter that changes the math of a Qwen2/Qwen3 decoder.
public struct QwenConfig: Equatable, Sendable {
    public enum Architecture: String, Sendable { case qwen2, qwen3 }

    public var architecture: Architecture
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var rmsNormEps: Float
    public var ropeTheta: Float
    /// Positions are divided by this ("linear" rope scaling); 1 when there is none.
    public var ropeLinearFactor: Float = 1
    public var maxPositions: Int
    public var tieWordEmbeddings: Bool
    /// q/k/v projections have biases (Qwen2: yes; Qwen3: `attention_bias`, normally no).
    public var attentionBias: Bool
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    public var qkNorm: Bool { architecture == .qwen3 }

    public init(architecture: Architecture, hiddenSize: Int, intermediateSize: Int, layers: Int, heads: Int,
                kvHeads: Int, headDim: Int, vocabSize: Int, rmsNormEps: Float, ropeTheta: Float,
                maxPositions: Int, tieWordEmbeddings: Bool, attentionBias: Bool) {
        self.architecture = architecture
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.vocabSize = vocabSize
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.maxPositions = maxPositions
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias
    }

    func validate(_ origin: String) throws {
        let positive: [(String, Int)] = [("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                                        ("num_hidden_layers", layers), ("num_attention_heads", heads),
                                        ("num_key_value_heads", kvHeads), ("head_dim", headDim), ("vocab_size", vocabSize)]
        for (name, v) in positive where v <= 0 || v > 1 << 24 {
            throw ModelFileError(origin, "\(name) is \(v), which is not a usable size")
        }
        guard heads % kvHeads == 0 else {
            throw ModelFileError(origin, "num_attention_heads (\(heads)) is not a multiple of num_key_value_heads (\(kvHeads))")
        }
        guard headDim % 2 == 0 else { throw ModelFileError(origin, "head_dim (\(headDim)) must be even for RoPE") }
        guard rmsNormEps > 0, ropeTheta > 0 else { throw ModelFileError(origin, "rms_norm_eps and rope_theta must be positive") }
    }

    /// Reads a Hugging Face `config.json`.
    public static func fromHuggingFace(path: String) throws -> QwenConfig {
        let data = try SafeFile.read(path, maxBytes: 1 << 20)
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFileError(path, "not a JSON object")
        }
        func int(_ k: String) throws -> Int {
            guard let v = obj[k] as? NSNumber else { throw ModelFileError(path, "missing or non-numeric \(k)") }
            return v.intValue
        }
        func optInt(_ k: String) -> Int? { (obj[k] as? NSNumber)?.intValue }
        let archs = obj["architectures"] as? [String] ?? []
        let modelType = obj["model_type"] as? String ?? ""
        let arch: Architecture
        if archs.contains("Qwen3ForCausalLM") || modelType == "qwen3" {
            arch = .qwen3
        } else if archs.contains("Qwen2ForCausalLM") || modelType == "qwen2" {
            arch = .qwen2
        } else {
            throw ModelFileError(path, "unsupported architecture \(archs.first ?? modelType) (Qwen3ForCausalLM and Qwen2ForCausalLM are supported)")
        }
        if let act = obj["hidden_act"] as? String, act != "silu" {
            throw ModelFileError(path, "unsupported hidden_act \(act) (only silu)")
        }
        let hidden = try int("hidden_size"), heads = try int("num_attention_heads")
        // transformers 5 moved rope_theta into rope_parameters; older configs keep it at the top.
        var theta = (obj["rope_theta"] as? NSNumber)?.doubleValue
        var scaling = obj["rope_scaling"] as? [String: Any]
        if let rp = obj["rope_parameters"] as? [String: Any] {
            theta = theta ?? (rp["rope_theta"] as? NSNumber)?.doubleValue
            if scaling == nil { scaling = rp }
        }
        var config = QwenConfig(
            architecture: arch, hiddenSize: hidden, intermediateSize: try int("intermediate_size"),
            layers: try int("num_hidden_layers"), heads: heads, kvHeads: optInt("num_key_value_heads") ?? heads,
            headDim: optInt("head_dim") ?? (heads > 0 ? hidden / heads : 0), vocabSize: try int("vocab_size"),
            rmsNormEps: Float((obj["rms_norm_eps"] as? NSNumber)?.doubleValue ?? 1e-6),
            ropeTheta: Float(theta ?? 10000), maxPositions: optInt("max_position_embeddings") ?? 32768,
            tieWordEmbeddings: (obj["tie_word_embeddings"] as? NSNumber)?.boolValue ?? false,
            attentionBias: arch == .qwen2 ? true : ((obj["attention_bias"] as? NSNumber)?.boolValue ?? false))
        if let s = scaling {
            let type = (s["rope_type"] as? String) ?? (s["type"] as? String) ?? "default"
            switch type {
            case "default": break
            case "linear":
                guard let f = (s["factor"] as? NSNumber)?.floatValue, f > 0 else { throw ModelFileError(path, "linear rope scaling without a positive factor") }
                config.ropeLinearFactor = f
            default:
                throw ModelFileError(path, "unsupported rope scaling type \(type) (default and linear are supported)")
            }
        }
        if (obj["use_sliding_window"] as? NSNumber)?.boolValue == true {
            throw ModelFileError(path, "use_sliding_window is true; sliding-window attention is not supported")
        }
        try config.validate(path)
        return config
    }

    /// Reads the hyper-parameters of a GGUF file (architecture `qwen2` or `qwen3`).
    public static func fromGGUF(_ g: GGUFFile) throws -> QwenConfig {
        let path = g.origin
        guard let a = g.architecture, let arch = Architecture(rawValue: a) else {
            throw ModelFileError(path, "unsupported architecture \(g.architecture ?? "(none)") (qwen2 and qwen3 are supported)")
        }
        func int(_ k: String) throws -> Int {
            guard let v = g.metadata["\(a).\(k)"]?.int else { throw ModelFileError(path, "missing metadata \(a).\(k)") }
            return v
        }
        let hidden = try int("embedding_length"), heads = try int("attention.head_count")
        guard let vocab = g.shape(of: "model.embed_tokens.weight")?.first else {
            throw ModelFileError(path, "missing tensor token_embd.weight")
        }
        var config = QwenConfig(
            architecture: arch, hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
            layers: try int("block_count"), heads: heads,
            kvHeads: g.metadata["\(a).attention.head_count_kv"]?.int ?? heads,
            headDim: g.metadata["\(a).attention.key_length"]?.int ?? hidden / max(heads, 1),
            vocabSize: vocab,
            rmsNormEps: Float(g.metadata["\(a).attention.layer_norm_rms_epsilon"]?.double ?? 1e-6),
            ropeTheta: Float(g.metadata["\(a).rope.freq_base"]?.double ?? 10000),
            maxPositions: g.metadata["\(a).context_length"]?.int ?? 32768,
            tieWordEmbeddings: !g.has("lm_head.weight"),
            attentionBias: g.has("model.layers.0.self_attn.q_proj.bias"))
        if let t = g.metadata["\(a).rope.scaling.type"]?.string, t != "none" {
            guard t == "linear", let f = g.metadata["\(a).rope.scaling.factor"]?.double, f > 0 else {
                throw ModelFileError(path, "unsupported rope scaling type \(t) (linear is supported)")
            }
            config.ropeLinearFactor = Float(f)
        }
        try config.validate(path)
        return config
    }
}
