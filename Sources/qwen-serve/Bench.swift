import ArgumentParser
import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime

/// Prompt-processing and generation speed on random token ids, as one JSON line.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure prompt processing and generation tokens/s.")

    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id.")
    var model = "default"
    @Option(name: .customLong("f32-weights"), help: "f32 copies of compact weights: auto, yes or no.")
    var f32Weights: F32Weights = .auto
    @Option(help: "Products with quantized weights: f32 or int8 (8-bit inputs, integer dot products).")
    var compute: ComputeMode = .f32
    @Option(help: "Quantize float weight matrices at load: q8_0, q4_0 or q4_k.")
    var quantize: QuantizeType?
    @Option(name: .customLong("prompt-tokens")) var promptTokens = 128
    @Option(name: .customLong("gen-tokens")) var genTokens = 64
    @Option(help: "Repetitions; medians are reported.") var reps = 3
    @Option(help: "Also decode this many sequences in lockstep (one forward per step, as the engine batches them).")
    var batch = 0
    @Option(name: .customLong("kv-cache-dtype"), help: "How the KV cache stores keys and values: f32, f16 or q8_0.")
    var kvCacheDType: KVCacheDType = .f32
    @Flag(help: "Also measure how fast this machine reads memory (all cores, 1 GiB), the ceiling for single-stream generation.")
    var bandwidth = false

    func run() throws {
        try reportingErrors {
            let info = try BLAS.load()
            let t0 = Date()
            let loaded = try LoadedModel.load(path: try ModelLocator.resolve(model, log: log), f32Weights: f32Weights,
                                              choice: compute == .int8 ? .int8 : .f32, quantize: quantize)
            let loadSeconds = Date().timeIntervalSince(t0)
            let m = loaded.model
            var rng = SeededRandom(seed: 1)
            var pp: [Double] = [], tg: [Double] = []
            for _ in 0..<reps {
                let prompt = (0..<promptTokens).map { _ in Int32(truncatingIfNeeded: rng.next() % UInt64(min(m.config.vocabSize, 150_000))) }
                var gen = Generator(model: m, tokenizer: loaded.tokenizer)
                gen.kvDType = kvCacheDType
                let r = try gen.generate(prompt: prompt, maxTokens: genTokens, params: .greedy, ignoreEOS: true)
                pp.append(Double(promptTokens) / r.prefillSeconds)
                // The first sampled token comes from the prefill; the rest are decode steps.
                tg.append(Double(max(r.tokens.count - 1, 1)) / r.decodeSeconds)
            }
            var batchTokS: Double? = nil
            if batch > 0 {
                // Each sequence gets its own prompt, then `genTokens` decode steps of all of them at once.
                var times: [Double] = []
                for _ in 0..<reps {
                    let caches = (0..<batch).map { _ in KVCache(config: m.config, dtype: kvCacheDType) }
                    let prompts = (0..<batch).map { _ in (0..<promptTokens).map { _ in Int32(truncatingIfNeeded: rng.next() % 150_000) } }
                    _ = try m.forward(zip(caches, prompts).map { .init(cache: $0, tokens: $1, logits: .last) })
                    let t = Date()
                    for step in 0..<genTokens {
                        _ = try m.forward(caches.map { .init(cache: $0, tokens: [Int32(100 + step)]) })
                    }
                    times.append(Double(batch * genTokens) / Date().timeIntervalSince(t))
                }
                batchTokS = median(times)
            }
            // Bytes a decode step reads: every layer matrix and the head once, in the form decoding reads them.
            let matrices: [WeightMatrix] = m.weights.layers.flatMap { [$0.q, $0.k, $0.v, $0.o, $0.gate, $0.up, $0.down] } + [m.weights.lmHead]
            let bytesPerToken = matrices.reduce(0) { $0 + Self.decodeBytes($1) }
            var extra: [String: Any] = ["weight_mb_per_token": Double(bytesPerToken) / 1e6,
                                        "achieved_gb_s": Double(bytesPerToken) * median(tg) / 1e9]
            if bandwidth { extra["read_gb_s"] = MemoryProbe.readGBPerSecond() }
            let out: [String: Any] = [
                "model": loaded.name, "prompt_tokens": promptTokens, "gen_tokens": genTokens, "reps": reps,
                "pp_tok_s": median(pp), "tg_tok_s": median(tg), "load_s": loadSeconds,
                "peak_rss_mb": Self.peakRSSMegabytes(), "blas_core": info.coreName, "blas_threads": info.threads,
                "cpu_level": CPUFeatures.level, "int8_kernel": CPUFeatures.int8Kernel,
            ].merging(batchTokS.map { ["batch": batch, "batch_tg_tok_s": $0] } ?? [:]) { a, _ in a }.merging(extra) { a, _ in a }
            let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    /// Bytes one single-row product reads from `w`: int8 panels, compact blocks, or f32.
    static func decodeBytes(_ w: WeightMatrix) -> Int {
        (w as? CompactMatrix)?.bytesReadPerProduct ?? w.rows * w.cols * 4
    }

    static func peakRSSMegabytes() -> Double { Double(MemoryProbe.peakResidentBytes()) / 1_048_576 }

    func median(_ a: [Double]) -> Double {
        let s = a.sorted()
        return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }
}
