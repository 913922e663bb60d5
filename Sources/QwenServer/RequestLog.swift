import Foundation
import Logging

/// What one completion request was, for its log line.
struct RequestRecord: Sendable {
    let id: String
    let endpoint: String
    let model: String
    let promptTokens: Int
    /// Only kept when prompt logging was asked for (`--log-prompts`).
    let prompt: String?
    let started: Date
}

/// Records a finished completion request: the metrics, and one structured log line (no
/// prompt text unless the operator asked for it).
public final class RequestLog: Sendable {
    let metrics: ServerMetrics
    let logger: Logger
    public let logPrompts: Bool

    public init(metrics: ServerMetrics, logger: Logger = Logger(label: "qwen-serve.requests"), logPrompts: Bool = false) {
        self.metrics = metrics
        self.logger = logger
        self.logPrompts = logPrompts
    }

    func record(id: String, endpoint: String, model: String, promptTokens: Int, prompt: String, started: Date) -> RequestRecord {
        metrics.requestStarted(promptTokens: promptTokens)
        return RequestRecord(id: id, endpoint: endpoint, model: model, promptTokens: promptTokens,
                             prompt: logPrompts ? prompt : nil, started: started)
    }

    func finished(_ r: RequestRecord, firstToken: Date?, completionTokens: Int, cancelled: Bool = false) {
        metrics.requestFinished(started: r.started, firstToken: firstToken, completionTokens: completionTokens, cancelled: cancelled)
        var m: Logger.Metadata = [
            "id": "\(r.id)", "endpoint": "\(r.endpoint)", "model": "\(r.model)", "prompt_tokens": "\(r.promptTokens)",
            "completion_tokens": "\(completionTokens)", "seconds": "\(String(format: "%.3f", Date().timeIntervalSince(r.started)))",
            "outcome": "\(cancelled ? "client_gone" : "ok")",
        ]
        if let f = firstToken { m["ttft_seconds"] = "\(String(format: "%.3f", f.timeIntervalSince(r.started)))" }
        if let p = r.prompt { m["prompt"] = "\(p)" }
        logger.info("request", metadata: m)
    }
}
