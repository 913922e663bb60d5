import ArgumentParser
import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import QwenChat
import QwenServer
import QwenTokenizer

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a prompt.")

    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id.")
    var model = "default"
    @Option(name: .customLong("f32-weights"), help: "f32 copies of compact weights: auto, yes or no.")
    var f32Weights: F32Weights = .auto
    @Option(help: "Products with quantized weights: auto (int8 for quantized weights on CPUs with AVX-512 VNNI, AVX-VNNI or AVX2, else f32), f32 or int8.")
    var compute: ComputeChoice = .auto
    @Option(help: "Quantize float weight matrices at load: q8_0, q4_0 or q4_k.")
    var quantize: QuantizeType?
    @Option(name: .customLong("adapter-path"), help: "A LoRA adapter directory (PEFT or mlx-lm) to apply.")
    var adapterPath: String?
    @Option(help: "The prompt text.")
    var prompt: String
    @Flag(help: "Send the prompt as a user message, rendered with the model's own chat template exactly as /v1/chat/completions renders it.")
    var chat = false
    @Option(help: "With --chat: a system message before the prompt.")
    var system: String?
    @Option(name: .customLong("chat-template-args"), help: #"With --chat: template arguments as JSON, e.g. '{"enable_thinking":false}' (as serve's)."#)
    var chatTemplateArgs: String?
    @Option(name: .customLong("max-tokens"), help: "How many tokens to generate at most.")
    var maxTokens = 128
    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0
    @Option(name: .customLong("top-k")) var topK = 0
    @Option(name: .customLong("top-p")) var topP: Float = 1
    @Option(name: .customLong("min-p")) var minP: Float = 0
    @Option(help: "Random seed; the same seed gives the same output.")
    var seed: UInt64?
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past the end-of-sequence token.")
    var ignoreEOS = false
    @Flag(help: "Print timings to stderr.")
    var verbose = false

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be at least 0") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be 0 or more") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard minP >= 0, minP <= 1 else { throw ValidationError("--min-p must be in [0, 1]") }
        guard topK >= 0 else { throw ValidationError("--top-k must be 0 (off) or more") }
        if !chat && (system != nil || chatTemplateArgs != nil) { throw ValidationError("--system and --chat-template-args need --chat") }
    }

    func run() throws {
        try reportingErrors {
            let info = try BLAS.load()
            if verbose {
                log("OpenBLAS kernels: \(info.coreName)\(info.chosenCoreType.map { " (OPENBLAS_CORETYPE=\($0) chosen for this CPU)" } ?? ""), \(info.threads) threads")
            }
            let path = try ModelLocator.resolve(model, log: log)
            let loaded = try LoadedModel.load(path: path, f32Weights: f32Weights, choice: compute, quantize: quantize)
            let ids = chat ? try chatPromptTokens(loaded.tokenizer) : loaded.tokenizer.encode(prompt)
            var params = SamplingParams(temperature: temperature, topK: topK, topP: topP, minP: minP, seed: seed)
            if temperature == 0 { params = .greedy }
            let adapter = try adapterPath.map { try LoRAAdapter.load(path: $0, config: loaded.model.config) }
            let result = try Generator(model: loaded.model, tokenizer: loaded.tokenizer, adapter: adapter)
                .generate(prompt: ids, maxTokens: maxTokens, params: params, ignoreEOS: ignoreEOS) { piece in
                    FileHandle.standardOutput.write(Data(piece.utf8))
                    return true
                }
            print()
            if verbose {
                let pp = Double(result.promptTokens) / max(result.prefillSeconds, 1e-9)
                let tg = Double(result.tokens.count) / max(result.decodeSeconds, 1e-9)
                log(String(format: "prompt: %d tokens, %.1f tok/s; generated: %d tokens, %.1f tok/s; finish: %@",
                           result.promptTokens, pp, result.tokens.count, tg, result.finishReason.rawValue))
            }
        }
    }

    /// The prompt as a one-turn chat (with the system message), rendered as the server renders it.
    func chatPromptTokens(_ tokenizer: Tokenizer) throws -> [Int32] {
        var extra: [(String, JSONValue)] = []
        if let args = chatTemplateArgs {
            guard let o = (try? JSONValue.parse(args))?.object else { throw ValidationError("--chat-template-args must be a JSON object") }
            for (k, _) in o where ChatTemplate.reservedVariables.contains(k) {
                throw ValidationError("--chat-template-args may not set '\(k)'")
            }
            extra = o
        }
        var messages: [JSONValue] = []
        if let system { messages.append(.object([("role", .string("system")), ("content", .string(system))])) }
        messages.append(.object([("role", .string("user")), ("content", .string(prompt))]))
        let renderer = try PromptRenderer(tokenizer: tokenizer)
        return renderer.tokens(try renderer.render(messages: messages, extra: extra))
    }
}
