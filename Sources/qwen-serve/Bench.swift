import ArgumentParser
import Foundation
import QwenKernels
import QwenModel
import QwenRuntime

/// Prompt-processing and generation speed on random token ids, as one JSON line.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure prompt processing and generation tokens/s.")

    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id.")
    var model = "default"
    @Option(name: .customLong("prompt-tokens")) var promptTokens = 128
    @Option(name: .customLong("gen-tokens")) var genTokens = 64
    @Option(help: "Repetitions; medians are reported.") var reps = 3

    func run() throws {
        try reportingErrors {
            let info = try BLAS.load()
            let t0 = Date()
            let loaded = try LoadedModel.load(path: try ModelLocator.resolve(model, log: log))
            let loadSeconds = Date().timeIntervalSince(t0)
            let m = loaded.model
            var rng = SeededRandom(seed: 1)
            var pp: [Double] = [], tg: [Double] = []
            for _ in 0..<reps {
                let prompt = (0..<promptTokens).map { _ in Int32(truncatingIfNeeded: rng.next() % UInt64(min(m.config.vocabSize, 150_000))) }
                let r = try Generator(model: m, tokenizer: loaded.tokenizer)
                    .generate(prompt: prompt, maxTokens: genTokens, params: .greedy, ignoreEOS: true)
                pp.append(Double(promptTokens) / r.prefillSeconds)
                // The first sampled token comes from the prefill; the rest are decode steps.
                tg.append(Double(max(r.tokens.count - 1, 1)) / r.decodeSeconds)
            }
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            let out: [String: Any] = [
                "model": loaded.name, "prompt_tokens": promptTokens, "gen_tokens": genTokens, "reps": reps,
                "pp_tok_s": median(pp), "tg_tok_s": median(tg), "load_s": loadSeconds,
                "peak_rss_mb": Double(usage.ru_maxrss) / 1024, "blas_core": info.coreName, "blas_threads": info.threads,
            ]
            let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    func median(_ a: [Double]) -> Double {
        let s = a.sorted()
        return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
    }
}
