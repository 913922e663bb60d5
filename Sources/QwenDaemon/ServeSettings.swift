import Foundation
import QwenFormats

/// Everything `qwen-serve serve` can be told, from three places in rising precedence:
/// a config file (flat YAML, one `key: value` per line), `QWEN_SERVE_*` environment
/// variables, and command-line flags. Keys are the flag names (`kv-cache-gb`); the
/// environment spells them `QWEN_SERVE_KV_CACHE_GB`.
public struct ServeSettings: Equatable, Sendable {
    public var model = "default"
    public var host = "127.0.0.1"
    public var port = 8080
    public var servedModelName: String?
    public var kvCacheGB = 2.0
    public var maxRunning = 64
    public var maxWaiting = 256
    public var stepTokens = 512
    public var chatTemplateArgs: String?
    public var maxBodyMB = 8
    public var shutdownGrace = 30.0
    public var apiKeyFile: String?
    public var apiKeys: [String] = []
    public var adminKeyFile: String?
    public var adminKeys: [String] = []
    /// LoRA adapters served from the start, as (name, directory); SIGHUP re-reads them.
    public var adapters: [NamedPath] = []
    /// An adapter applied to the base model name itself (mlx_lm.server's --adapter-path).
    public var adapterPath: String?
    /// swift-log level, line format (text = logfmt, or json) and whether request lines carry the prompt.
    public var logLevel = "info"
    public var logFormat = "text"
    public var logPrompts = false
    /// f32 copies of compact weights: auto, yes or no (see F32Weights).
    public var f32Weights = "auto"
    /// Products with quantized weights: auto, f32 or int8 (see ComputeChoice).
    public var compute = "auto"
    /// How the KV cache stores keys and values: f32 or f16.
    public var kvCacheDType = "f32"
    /// Speculative decoding: auto (prompt lookup where the cost model expects a gain), ngram
    /// (always, when a match is found) or off.
    public var speculative = "auto"
    /// Drafted tokens per sequence and step at most.
    public var maxDraftTokens = 12
    /// A second model of the same vocabulary that drafts tokens for speculative decoding.
    public var draftModel: String?
    /// The web console at `/`: on, or off for API-only deployments.
    public var ui = true
    /// Quantize float weight matrices at load: nil, q8_0, q4_0 or q4_k (see QuantizeType).
    public var quantize: String?
    /// HTTPS: a PEM certificate chain and its private key (both or neither).
    public var tlsCertFile: String?
    public var tlsKeyFile: String?
    /// Connections at most, and per-connection timeouts in seconds (headers, body, a write
    /// the client does not read).
    public var maxConnections = 1024
    public var headerTimeout = 30.0
    public var bodyTimeout = 60.0
    public var writeTimeout = 60.0
    /// Control-token text in message content: `text` (plain text, as OpenAI) or `tokens` (as transformers).
    public var contentSpecialTokens = "text"
    /// Fine-tuning state (files, jobs, adapters): SQLite and files under this directory.
    /// Default: $STATE_DIRECTORY (systemd's StateDirectory=), else ~/.local/state/qwen-serve.
    public var stateDir: String?
    /// Where files, jobs and fine-tuned models live: `sqlite` (in the state directory) or a
    /// `postgres://user:pass@host:port/db?sslmode=…` URL shared by several replicas.
    public var stateDB = "sqlite"
    /// The database password, read from this file (systemd credentials, Kubernetes secrets).
    public var stateDBPasswordFile: String?
    /// This replica's name in job events and leases (default: host name and port).
    public var nodeID: String?
    /// Seconds a fine-tuning job's claim holds without a heartbeat.
    public var jobLease = 30.0
    /// Share (0–1) of engine time a training job may take while requests are waiting.
    public var trainShare = 0.3
    /// Largest file /v1/files accepts, in MiB.
    public var maxUploadMB = 512
    /// Days a stored response (`store: true`) is kept.
    public var responseRetentionDays = 30.0
    /// Memory a fine-tuning job may plan for beside the served model, in GiB (nil: what is available).
    public var trainMemoryGB: Double?

    public struct NamedPath: Equatable, Sendable {
        public let name: String
        public let path: String
    }

    public init() {}

    public struct SettingError: Error, CustomStringConvertible {
        public let description: String
    }

    public static let keys = ["model", "host", "port", "served-model-name", "kv-cache-gb", "max-running", "max-waiting",
                              "step-tokens", "chat-template-args", "max-body-mb", "shutdown-grace", "api-key-file", "api-key",
                              "admin-api-key-file", "admin-api-key", "adapter", "adapter-path",
                              "log-level", "log-format", "log-prompts", "tls-cert-file", "tls-key-file", "f32-weights", "compute", "kv-cache-dtype",
                              "quantize", "max-connections", "header-timeout", "body-timeout", "write-timeout", "content-special-tokens",
                              "state-dir", "train-share", "max-upload-mb", "train-memory-gb", "speculative", "max-draft-tokens",
                              "response-retention-days", "ui", "draft-model", "state-db", "state-db-password-file", "node-id",
                              "job-lease"]

    /// Applies one setting given as text; `source` names where it came from for errors.
    public mutating func set(_ key: String, _ raw: String, source: String) throws {
        let value = raw.trimmingCharacters(in: .whitespaces)
        func bad(_ what: String) -> SettingError { SettingError(description: "\(source): \(key) must be \(what), not '\(value)'") }
        func int(_ range: ClosedRange<Int>) throws -> Int {
            guard let i = Int(value), range.contains(i) else { throw bad("an integer in \(range.lowerBound)…\(range.upperBound)") }
            return i
        }
        func double() throws -> Double {
            guard let d = Double(value), d.isFinite, d > 0 else { throw bad("a positive number") }
            return d
        }
        switch key {
        case "model": model = value
        case "host": host = value
        case "port": port = try int(0...65535)
        case "served-model-name": servedModelName = value
        case "kv-cache-gb": kvCacheGB = try double()
        case "max-running": maxRunning = try int(1...4096)
        case "max-waiting": maxWaiting = try int(0...1_000_000)
        case "step-tokens": stepTokens = try int(1...1_000_000)
        case "chat-template-args":
            guard let d = value.data(using: .utf8), (try? JSONSerialization.jsonObject(with: d)) is [String: Any] else {
                throw bad("a JSON object")
            }
            chatTemplateArgs = value
        case "max-body-mb": maxBodyMB = try int(1...4096)
        case "shutdown-grace":
            guard let d = Double(value), d >= 0 else { throw bad("0 or more seconds") }
            shutdownGrace = d
        case "api-key-file": apiKeyFile = value
        case "api-key":
            guard !value.isEmpty else { throw bad("a non-empty key") }
            apiKeys.append(value)
        case "admin-api-key-file": adminKeyFile = value
        case "admin-api-key":
            guard !value.isEmpty else { throw bad("a non-empty key") }
            adminKeys.append(value)
        case "quantize":
            guard ["q8_0", "q4_0", "q4_k", "none"].contains(value) else { throw bad("q8_0, q4_0, q4_k or none") }
            quantize = value == "none" ? nil : value
        case "max-connections": maxConnections = try int(1...1_000_000)
        case "header-timeout": headerTimeout = try double()
        case "body-timeout": bodyTimeout = try double()
        case "write-timeout": writeTimeout = try double()
        case "content-special-tokens":
            guard value == "text" || value == "tokens" else { throw bad("text or tokens") }
            contentSpecialTokens = value
        case "state-dir":
            guard !value.isEmpty else { throw bad("a directory") }
            stateDir = value
        case "state-db":
            guard value == "sqlite" || value.hasPrefix("postgres://") || value.hasPrefix("postgresql://") else {
                // Not echoed: a URL may hold a password.
                throw SettingError(description: "\(source): state-db must be sqlite or a postgres:// URL")
            }
            stateDB = value
        case "state-db-password-file":
            guard !value.isEmpty else { throw bad("a file") }
            stateDBPasswordFile = value
        case "node-id":
            guard !value.isEmpty, value.count <= 128, value.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 32 && $0.value < 127 }) else {
                throw bad("1–128 printable ASCII characters without spaces")
            }
            nodeID = value
        case "job-lease":
            guard let d = Double(value), d >= 1, d <= 3600 else { throw bad("a number of seconds from 1 to 3600") }
            jobLease = d
        case "train-share":
            guard let d = Double(value), d >= 0, d <= 1 else { throw bad("a number from 0 to 1") }
            trainShare = d
        case "max-upload-mb": maxUploadMB = try int(1...1_000_000)
        case "train-memory-gb": trainMemoryGB = try double()
        case "response-retention-days":
            guard let d = Double(value), d > 0, d <= 36500 else { throw bad("a number of days from above 0 to 36500") }
            responseRetentionDays = d
        case "adapter":
            // NAME=PATH; several may be given at once separated by commas (handy in one variable).
            for item in value.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
                guard let eq = item.firstIndex(of: "="), eq != item.startIndex, item.index(after: eq) != item.endIndex else {
                    throw SettingError(description: "\(source): adapter must be NAME=PATH, not '\(item)'")
                }
                let entry = NamedPath(name: String(item[..<eq]), path: String(item[item.index(after: eq)...]))
                adapters.removeAll { $0.name == entry.name }
                adapters.append(entry)
            }
        case "adapter-path": adapterPath = value
        case "log-level":
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            guard levels.contains(value) else { throw bad("one of \(levels.joined(separator: ", "))") }
            logLevel = value
        case "f32-weights":
            guard ["auto", "yes", "no"].contains(value) else { throw bad("auto, yes or no") }
            f32Weights = value
        case "compute":
            guard ["auto", "f32", "int8"].contains(value) else { throw bad("auto, f32 or int8") }
            compute = value
        case "kv-cache-dtype":
            guard ["f32", "f16", "q8_0"].contains(value) else { throw bad("f32, f16 or q8_0") }
            kvCacheDType = value
        case "draft-model":
            guard !value.isEmpty else { throw bad("a model directory, a .gguf file or a hub repo id") }
            draftModel = value
        case "speculative":
            guard ["auto", "ngram", "draft", "off"].contains(value) else { throw bad("auto, ngram, draft or off") }
            speculative = value
        case "max-draft-tokens": maxDraftTokens = try int(1...64)
        case "ui":
            guard value == "on" || value == "off" else { throw bad("on or off") }
            ui = value == "on"
        case "tls-cert-file": tlsCertFile = value
        case "tls-key-file": tlsKeyFile = value
        case "log-format":
            guard value == "text" || value == "json" else { throw bad("text or json") }
            logFormat = value
        case "log-prompts":
            guard let b = ["true": true, "yes": true, "1": true, "false": false, "no": false, "0": false][value.lowercased()] else {
                throw bad("true or false")
            }
            logPrompts = b
        default:
            throw SettingError(description: "\(source): unknown setting '\(key)' (known: \(Self.keys.joined(separator: ", ")))")
        }
    }

    /// Reads a flat YAML file: `key: value` lines, `#` comments, optional quotes.
    public mutating func apply(file path: String) throws {
        let data: Data
        do { data = try SafeFile.read(path, maxBytes: 1 << 20) } catch {
            throw SettingError(description: "cannot read the config file: \(error)")
        }
        for (n, line) in String(decoding: data, as: UTF8.self).components(separatedBy: "\n").enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty || t.hasPrefix("#") { continue }
            guard let colon = t.firstIndex(of: ":") else {
                throw SettingError(description: "\(path):\(n + 1): expected 'key: value'")
            }
            let key = String(t[..<colon]).trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "_", with: "-")
            var value = String(t[t.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
            if !value.hasPrefix("{"), let hash = value.range(of: " #") { value = String(value[..<hash.lowerBound]).trimmingCharacters(in: .whitespaces) }
            if value.count >= 2, (value.hasPrefix("\"") && value.hasSuffix("\"")) || (value.hasPrefix("'") && value.hasSuffix("'")) {
                value = String(value.dropFirst().dropLast())
            }
            try set(key, value, source: "\(path):\(n + 1)")
        }
    }

    /// Applies `QWEN_SERVE_*` variables.
    public mutating func apply(environment env: [String: String]) throws {
        for key in Self.keys {
            let name = "QWEN_SERVE_" + key.uppercased().replacingOccurrences(of: "-", with: "_")
            if let v = env[name] { try set(key, v, source: "environment variable \(name)") }
        }
    }

    /// Why replacing `self` (the settings in force) by `new` on a reload is refused: a reload
    /// never switches authentication off. A file cut short, or emptied by mistake, would
    /// otherwise open the server; turning keys off takes a restart.
    public func reloadRefusal(_ new: ServeSettings) -> String? {
        if !apiKeys.isEmpty && new.apiKeys.isEmpty { return "the new settings have no API keys; a reload never turns API-key authentication off (restart to do that)" }
        if !adminKeys.isEmpty && new.adminKeys.isEmpty { return "the new settings have no admin keys; a reload never turns admin-key authentication off (restart to do that)" }
        return nil
    }

    /// Checks settings that only make sense together.
    public func validate() throws {
        if (tlsCertFile == nil) != (tlsKeyFile == nil) {
            throw SettingError(description: "tls-cert-file and tls-key-file must be given together")
        }
        if speculative == "draft" && draftModel == nil {
            throw SettingError(description: "speculative: draft needs a draft model (draft-model)")
        }
    }

    /// Reads the key files (one key per line, # comments) into `apiKeys` and `adminKeys`.
    public mutating func loadAPIKeys() throws {
        if let path = apiKeyFile { apiKeys += try Self.keys(file: path, setting: "api-key-file") }
        if let path = adminKeyFile { adminKeys += try Self.keys(file: path, setting: "admin-api-key-file") }
    }

    static func keys(file path: String, setting: String) throws -> [String] {
        let data: Data
        do { data = try SafeFile.read(path, maxBytes: 1 << 20) } catch {
            throw SettingError(description: "\(setting): cannot read \(error)")
        }
        let keys = String(decoding: data, as: UTF8.self).components(separatedBy: .newlines)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !keys.isEmpty else { throw SettingError(description: "\(setting): \(path) holds no keys") }
        return keys
    }

    /// The effective settings as a config file (API keys are not printed).
    public var rendered: String {
        var lines: [String] = []
        func q(_ s: String) -> String { s.contains(":") || s.contains("#") || s.hasPrefix("{") ? "'\(s)'" : s }
        lines.append("model: \(q(model))")
        lines.append("host: \(host)")
        lines.append("port: \(port)")
        if let s = servedModelName { lines.append("served-model-name: \(q(s))") }
        lines.append("kv-cache-gb: \(kvCacheGB)")
        lines.append("f32-weights: \(f32Weights)")
        lines.append("compute: \(compute)")
        lines.append("kv-cache-dtype: \(kvCacheDType)")
        lines.append("speculative: \(speculative)")
        lines.append("max-draft-tokens: \(maxDraftTokens)")
        lines.append("ui: \(ui ? "on" : "off")")
        if let d = draftModel { lines.append("draft-model: \(q(d))") }
        if let q = quantize { lines.append("quantize: \(q)") }
        lines.append("max-running: \(maxRunning)")
        lines.append("max-waiting: \(maxWaiting)")
        lines.append("step-tokens: \(stepTokens)")
        if let a = chatTemplateArgs { lines.append("chat-template-args: \(a)") }
        lines.append("max-body-mb: \(maxBodyMB)")
        lines.append("shutdown-grace: \(shutdownGrace)")
        if let f = apiKeyFile { lines.append("api-key-file: \(q(f))") }
        if !apiKeys.isEmpty { lines.append("# \(apiKeys.count) API key(s) set") }
        if let f = adminKeyFile { lines.append("admin-api-key-file: \(q(f))") }
        if !adminKeys.isEmpty { lines.append("# \(adminKeys.count) admin key(s) set") }
        for a in adapters { lines.append("adapter: \(q(a.name + "=" + a.path))") }
        if let p = adapterPath { lines.append("adapter-path: \(q(p))") }
        if let c = tlsCertFile { lines.append("tls-cert-file: \(q(c))") }
        if let k = tlsKeyFile { lines.append("tls-key-file: \(q(k))") }
        lines.append("log-level: \(logLevel)")
        lines.append("log-format: \(logFormat)")
        lines.append("log-prompts: \(logPrompts)")
        lines.append("max-connections: \(maxConnections)")
        lines.append("header-timeout: \(headerTimeout)")
        lines.append("body-timeout: \(bodyTimeout)")
        lines.append("write-timeout: \(writeTimeout)")
        lines.append("content-special-tokens: \(contentSpecialTokens)")
        if let d = stateDir { lines.append("state-dir: \(q(d))") }
        // The URL may hold a password: shown without it.
        lines.append("state-db: \(q(Self.redacted(stateDB)))")
        if let f = stateDBPasswordFile { lines.append("state-db-password-file: \(q(f))") }
        if let n = nodeID { lines.append("node-id: \(q(n))") }
        lines.append("job-lease: \(jobLease)")
        lines.append("train-share: \(trainShare)")
        lines.append("max-upload-mb: \(maxUploadMB)")
        lines.append("response-retention-days: \(responseRetentionDays)")
        if let g = trainMemoryGB { lines.append("train-memory-gb: \(g)") }
        return lines.joined(separator: "\n") + "\n"
    }
}

extension ServeSettings {
    /// A database URL with its password replaced by `***`.
    public static func redacted(_ url: String) -> String {
        guard var c = URLComponents(string: url), c.password != nil else { return url }
        c.password = "***"
        return c.string ?? "postgres://***"
    }
}
