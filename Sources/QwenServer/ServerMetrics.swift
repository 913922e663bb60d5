import Foundation
import QwenEngine

/// Counters and histograms exposed at /metrics in Prometheus' text format.
public final class ServerMetrics: @unchecked Sendable {
    struct Histogram {
        let buckets: [Double]
        var counts: [Int]
        var sum = 0.0
        var count = 0
        init(_ b: [Double]) {
            buckets = b
            counts = Array(repeating: 0, count: b.count)
        }
        mutating func observe(_ v: Double) {
            for (i, b) in buckets.enumerated() where v <= b { counts[i] += 1 }
            sum += v
            count += 1
        }
        func render(_ name: String, _ help: String) -> String {
            var s = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (b, c) in zip(buckets, counts) { s += "\(name)_bucket{le=\"\(b)\"} \(c)\n" }
            s += "\(name)_bucket{le=\"+Inf\"} \(count)\n\(name)_sum \(sum)\n\(name)_count \(count)\n"
            return s
        }
    }

    private let lock = NSLock()
    private var requests: [String: Int] = [:]  // "endpoint|status"
    private var promptTokens = 0
    private var generationTokens = 0
    private var cancelled = 0
    private var draftTokens = 0
    private var acceptedDraftTokens = 0
    private var ttft = Histogram([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])
    private var tpot = Histogram([0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5])
    private var e2e = Histogram([0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300])
    private var batchSize = Histogram([1, 2, 4, 8, 16, 32, 64, 128, 256])
    private var stepTokens = Histogram([1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048])
    private var stepSeconds = Histogram([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5])

    public init() {}

    func countRequest(endpoint: String, status: Int) {
        lock.lock()
        requests["\(endpoint)|\(status)", default: 0] += 1
        lock.unlock()
    }

    func requestStarted(promptTokens n: Int) {
        lock.lock()
        promptTokens += n
        lock.unlock()
    }

    func requestFinished(started: Date, firstToken: Date?, completionTokens: Int, cancelled wasCancelled: Bool = false) {
        let now = Date()
        lock.lock()
        defer { lock.unlock() }
        generationTokens += completionTokens
        if wasCancelled { cancelled += 1 }
        e2e.observe(now.timeIntervalSince(started))
        if let f = firstToken {
            ttft.observe(f.timeIntervalSince(started))
            if completionTokens > 1 { tpot.observe(now.timeIntervalSince(f) / Double(completionTokens - 1)) }
        }
    }

    func observeStep(_ s: Engine.StepStats) {
        lock.lock()
        batchSize.observe(Double(s.sequences))
        stepTokens.observe(Double(s.tokens))
        stepSeconds.observe(s.seconds)
        draftTokens += s.draftTokens
        acceptedDraftTokens += s.acceptedDraftTokens
        lock.unlock()
    }

    public func render(engine: Engine.Snapshot, adapters entries: [AdapterRegistry.Entry] = [], fineTuning: String? = nil) -> String {
        let adapters = entries.count
        lock.lock()
        defer { lock.unlock() }
        var s = "# HELP qwen_requests_total HTTP requests by endpoint and status.\n# TYPE qwen_requests_total counter\n"
        for (k, v) in requests.sorted(by: { $0.key < $1.key }) {
            let p = k.split(separator: "|")
            s += "qwen_requests_total{endpoint=\"\(p[0])\",status=\"\(p[1])\"} \(v)\n"
        }
        s += "# HELP qwen_prompt_tokens_total Prompt tokens received.\n# TYPE qwen_prompt_tokens_total counter\nqwen_prompt_tokens_total \(promptTokens)\n"
        s += "# HELP qwen_generation_tokens_total Tokens generated.\n# TYPE qwen_generation_tokens_total counter\nqwen_generation_tokens_total \(generationTokens)\n"
        s += "# HELP qwen_requests_cancelled_total Requests whose client went away.\n# TYPE qwen_requests_cancelled_total counter\nqwen_requests_cancelled_total \(cancelled)\n"
        s += "# HELP qwen_spec_draft_tokens_total Tokens proposed by speculative decoding and verified.\n# TYPE qwen_spec_draft_tokens_total counter\nqwen_spec_draft_tokens_total \(draftTokens)\n"
        s += "# HELP qwen_spec_accepted_tokens_total Proposed tokens the model kept.\n# TYPE qwen_spec_accepted_tokens_total counter\nqwen_spec_accepted_tokens_total \(acceptedDraftTokens)\n"
        let rate = draftTokens > 0 ? Double(acceptedDraftTokens) / Double(draftTokens) : 0
        s += "# HELP qwen_spec_acceptance_rate Kept share of all proposed tokens so far.\n# TYPE qwen_spec_acceptance_rate gauge\nqwen_spec_acceptance_rate \(rate)\n"
        s += ttft.render("qwen_time_to_first_token_seconds", "Time from request to first generated token.")
        s += tpot.render("qwen_time_per_output_token_seconds", "Mean time between generated tokens of a request.")
        s += e2e.render("qwen_request_duration_seconds", "Time from request to its last token.")
        s += batchSize.render("qwen_batch_size", "Sequences in one engine step.")
        s += stepTokens.render("qwen_step_tokens", "Tokens computed in one engine step.")
        s += stepSeconds.render("qwen_step_seconds", "Duration of one engine step.")
        let gauges: [(String, String, Int)] = [
            ("qwen_running_sequences", "Sequences in the running batch.", engine.running),
            ("qwen_waiting_requests", "Requests waiting for a place (queue depth).", engine.waiting),
            ("qwen_kv_blocks_used", "KV cache blocks held by live sequences.", engine.kvBlocksUsed),
            ("qwen_kv_blocks_free", "KV cache blocks free.", engine.kvBlocksFree),
            ("qwen_kv_blocks_cached", "KV cache blocks holding reusable prefixes, free to evict.", engine.kvBlocksCached),
            ("qwen_kv_blocks_total", "KV cache blocks in all.", engine.kvBlocksTotal),
            ("qwen_adapters_loaded", "LoRA adapters being served.", adapters),
        ]
        for (n, h, v) in gauges { s += "# HELP \(n) \(h)\n# TYPE \(n) gauge\n\(n) \(v)\n" }
        s += "# HELP qwen_training_seconds_total Engine time spent fine-tuning, interleaved with serving.\n# TYPE qwen_training_seconds_total counter\nqwen_training_seconds_total \(engine.interleavedSeconds)\n"
        // For LoRA-aware routers (the shape of vLLM's vllm:lora_requests_info): which adapters
        // this replica has running and waiting; the value is the reading's time. Every loaded
        // adapter may run in one batch, so max_lora is how many are loaded.
        func names(_ ids: Set<ObjectIdentifier>) -> String {
            entries.filter { ids.contains(ObjectIdentifier($0.adapter)) }.map(\.name).sorted().joined(separator: ",")
        }
        s += "# HELP qwen_lora_requests_info LoRA adapters with running and waiting requests on this replica.\n# TYPE qwen_lora_requests_info gauge\n"
        s += "qwen_lora_requests_info{max_lora=\"\(adapters)\",running_lora_adapters=\"\(names(engine.runningAdapters))\",waiting_lora_adapters=\"\(names(engine.waitingAdapters))\"} \(Date().timeIntervalSince1970)\n"
        if let state = fineTuning {
            s += "# HELP qwen_fine_tuning_runner This replica's fine-tuning runner: idle, training, or suspended (its database out of reach).\n# TYPE qwen_fine_tuning_runner gauge\n"
            for st in ["idle", "training", "suspended"] { s += "qwen_fine_tuning_runner{state=\"\(st)\"} \(st == state ? 1 : 0)\n" }
        }
        return s
    }
}
