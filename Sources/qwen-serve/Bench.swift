import ArgumentParser
import Foundation
import QwenFormats
import QwenKernels
import QwenEngine
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
    @Flag(help: "Also generate through the engine with speculative decoding off and auto, on a prompt that repeats a random passage (the output copies it): tok/s of each and the drafted tokens kept.")
    var speculative = false
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
            if speculative {
                for (k, v) in try Self.speculation(loaded, promptTokens: promptTokens, genTokens: genTokens, reps: reps, kvDType: kvCacheDType) {
                    extra[k] = v
                }
            }
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

    /// Generation through the engine, speculation off against auto, on prompts made of a random
    /// passage and its first few tokens again (so the continuation copies the passage): decode
    /// tok/s (from the first token to the last) of each, medians, and the drafts of the auto runs.
    static func speculation(_ loaded: LoadedModel, promptTokens: Int, genTokens: Int, reps: Int, kvDType: KVCacheDType) throws -> [String: Any] {
        var config = Engine.Config()
        config.kvDType = kvDType
        config.kvBlocks = Engine.blocks(forBytes: 512 << 20, config: loaded.model.config, dtype: kvDType)
        let engine = Engine(model: loaded.model, tokenizer: loaded.tokenizer, config: config)
        engine.start()
        defer { engine.shutdown(grace: 0) }
        var rng = SeededRandom(seed: 7)
        var rates: [SpeculativeMode: [Double]] = [:]
        var drafted = 0, kept = 0
        for _ in 0..<reps {
            let passage = (0..<max(promptTokens, 16)).map { _ in Int32(truncatingIfNeeded: rng.next() % UInt64(min(loaded.model.config.vocabSize, 150_000))) }
            for mode in [SpeculativeMode.off, .auto] {
                var r = EngineRequest(prompt: passage + passage[0..<8], params: .greedy, maxTokens: genTokens)
                r.ignoreEOS = true
                r.speculative = SpeculativeOptions(mode: mode)
                let (rate, usage) = try Self.decodeRate(engine, r)
                rates[mode, default: []].append(rate)
                if mode == .auto, let u = usage {
                    drafted += u.draftTokens
                    kept += u.acceptedDraftTokens
                }
            }
        }
        let off = rates[.off].map(median) ?? 0, auto = rates[.auto].map(median) ?? 0
        return ["spec_off_tg_tok_s": off, "spec_auto_tg_tok_s": auto, "spec_speedup": off > 0 ? auto / off : 0,
                "spec_draft_tokens": drafted, "spec_accepted_tokens": kept]
    }

    /// Decode tok/s of one request (after its first token) and its usage.
    static func decodeRate(_ engine: Engine, _ r: EngineRequest) throws -> (Double, EngineUsage?) {
        final class Result: @unchecked Sendable {
            var first: Date?, last = Date(), count = 0
            var usage: EngineUsage?
            var failure: String?
        }
        let stream = try engine.submit(r)
        let result = Result()
        let done = DispatchSemaphore(value: 0)
        Task {
            for await e in stream.events {
                switch e {
                case .token:
                    if result.first == nil { result.first = Date() }
                    result.last = Date()
                    result.count += 1
                case .done(let u): result.usage = u
                case .failed(let m): result.failure = m
                default: break
                }
            }
            done.signal()
        }
        done.wait()
        if let f = result.failure { throw ValidationError("generation failed: \(f)") }
        guard let first = result.first, result.count > 1 else { return (0, result.usage) }
        return (Double(result.count - 1) / result.last.timeIntervalSince(first), result.usage)
    }

    static func median(_ a: [Double]) -> Double {
        let s = a.sorted()
        return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }

    /// Bytes one single-row product reads from `w`: int8 panels, compact blocks, or f32.
    static func decodeBytes(_ w: WeightMatrix) -> Int {
        (w as? CompactMatrix)?.bytesReadPerProduct ?? w.rows * w.cols * 4
    }

    static func peakRSSMegabytes() -> Double { Double(MemoryProbe.peakResidentBytes()) / 1_048_576 }

    func median(_ a: [Double]) -> Double { Self.median(a) }
}
