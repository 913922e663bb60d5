import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenTokenizer

/// Whether compact (quantized, bf16, f16) matrices get an f32 copy for wide products.
/// The copy makes prompt processing faster (measured ~1.25× on a bf16 model, ~1.1× on the
/// quantized default model) and costs 4 bytes per weight; decoding does not use it.
public enum F32Weights: String, Sendable, CaseIterable {
    /// Keep copies when they take at most half of the machine's memory.
    case auto
    case yes
    case no

    public func keep(copyBytes: Int) -> Bool {
        switch self {
        case .yes: return true
        case .no: return false
        case .auto: return UInt64(copyBytes) <= ProcessInfo.processInfo.physicalMemory / 2
        }
    }
}

/// What the user asked for: a compute mode, or `auto` — int8 where the weights are quantized
/// and the CPU has fast 8-bit dot products (AVX-512 VNNI, or AVX2), f32 otherwise (float
/// weights, CPUs with neither, or panels that would not fit in memory).
public enum ComputeChoice: String, Sendable, CaseIterable {
    case auto, f32, int8

    /// The mode for `source`, and why.
    func resolve(_ source: TensorSource) -> (ComputeMode, String) {
        switch self {
        case .f32: return (.f32, "asked for")
        case .int8: return (.int8, "asked for")
        case .auto:
            guard source.int8PanelBytes > 0 else { return (.f32, "auto: the weights are not quantized") }
            guard CPUFeatures.int8Kernel != "portable" else { return (.f32, "auto: this CPU has no AVX-512 VNNI, AVX-VNNI or AVX2") }
            guard UInt64(source.int8PanelBytes) <= ProcessInfo.processInfo.physicalMemory / 10 * 8 else {
                return (.f32, "auto: the int8 panels would not fit in memory")
            }
            return (.int8, "auto: quantized weights, \(CPUFeatures.int8Kernel) kernels")
        }
    }
}

/// A model ready to run: weights, tokenizer and the name clients call it by.
public final class LoadedModel {
    public let name: String
    public let path: String
    public let model: QwenModel
    public let tokenizer: Tokenizer
    /// How its quantized products compute, and why that mode was chosen.
    public let compute: ComputeMode
    public let computeReason: String
    /// Whether the layer weights are float (bf16/f16/f32, not quantized at load): their products
    /// then run the f32 kernels.
    public let floatWeights: Bool

    public init(name: String, path: String, model: QwenModel, tokenizer: Tokenizer, compute: ComputeMode = .f32, computeReason: String = "",
                floatWeights: Bool = false) {
        self.name = name
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.compute = compute
        self.computeReason = computeReason
        self.floatWeights = floatWeights
    }

    /// For float weights, what `--quantize q8_0` would change, said at start-up: a warning where
    /// the f32 products run on portable code (no AVX2 here, or QWEN_CPU_LEVEL=portable), a note
    /// otherwise (generation reads 2 bytes a weight instead of about 1.06).
    public var floatWeightAdvice: (message: String, slow: Bool)? {
        guard floatWeights else { return nil }
        if CPUFeatures.level == "portable" {
            return ("float weights run on the portable f32 kernels here (no AVX2, or QWEN_CPU_LEVEL=portable): slow; "
                    + "--quantize q8_0 would read about half the bytes", true)
        }
        return ("float weights: each generated token reads every weight as 2 bytes; --quantize q8_0 reads about half that (faster generation, "
                + "weights rounded to 8 bits per value)", false)
    }

    /// Loads a Hugging Face directory or a GGUF file from disk.
    public static func load(path: String, name: String? = nil, f32Weights: F32Weights = .auto, compute: ComputeMode = .f32) throws -> LoadedModel {
        try load(path: path, name: name, f32Weights: f32Weights, choice: compute == .int8 ? .int8 : .f32)
    }

    /// `quantize`: float weight matrices become blocks of that type at load (see QuantizedSource).

    /// Loads a Hugging Face directory or a GGUF file from disk, choosing the compute mode.
    public static func load(path: String, name: String? = nil, f32Weights: F32Weights = .auto, choice: ComputeChoice,
                            quantize: QuantizeType? = nil) throws -> LoadedModel {
        func view(_ s: TensorSource) -> TensorSource { quantize.map { QuantizedSource(s, type: $0) } ?? s }
        try BLAS.load()
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelFileError(path, "no such file or directory")
        }
        let displayName = name ?? URL(fileURLWithPath: path).lastPathComponent
        /// The int8 panels are a second copy of the quantized weights: refuse what cannot fit
        /// rather than be killed for memory halfway through loading.
        func checkInt8Memory(_ source: TensorSource, _ compute: ComputeMode) throws {
            let need = source.int8PanelBytes, have = ProcessInfo.processInfo.physicalMemory
            guard compute != .int8 || UInt64(need) <= have / 10 * 8 else {
                throw ModelFileError(path, String(format: "--compute int8 needs %.1f GB for repacked weights, more than 80%% of this machine's %.1f GB; use --compute f32",
                                                  Double(need) / 1e9, Double(have) / 1e9))
            }
        }
        if isDir.boolValue {
            let config = try QwenConfig.fromHuggingFace(path: (path as NSString).appendingPathComponent("config.json"))
            let source = view(try SafetensorsDirectory(directory: path))
            let (compute, why) = choice.resolve(source)
            try checkInt8Memory(source, compute)
            let tokenizer = try Tokenizer.load(directory: path)
            let model = try QwenModel(config: config, source: source, f32Copies: f32Weights.keep(copyBytes: source.f32CopyBytes(compute: compute)),
                                      compute: compute)
            return LoadedModel(name: displayName, path: path, model: model, tokenizer: tokenizer, compute: compute, computeReason: why,
                               floatWeights: source.int8PanelBytes == 0)
        }
        let gguf = try GGUFFile(path: path)
        let source = view(gguf)
        let (compute, why) = choice.resolve(source)
        try checkInt8Memory(source, compute)
        let config = try QwenConfig.fromGGUF(gguf)
        let tokenizer = try Tokenizer.load(gguf: gguf)
        let model = try QwenModel(config: config, source: source, f32Copies: f32Weights.keep(copyBytes: source.f32CopyBytes(compute: compute)),
                                  compute: compute)
        return LoadedModel(name: displayName.hasSuffix(".gguf") ? String(displayName.dropLast(5)) : displayName,
                           path: path, model: model, tokenizer: tokenizer, compute: compute, computeReason: why,
                           floatWeights: source.int8PanelBytes == 0)
    }
}
