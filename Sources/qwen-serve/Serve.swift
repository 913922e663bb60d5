import ArgumentParser
import Foundation
import Hummingbird
import QwenChat
import QwenDaemon
import QwenEngine
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import QwenServer
import Logging
import ServiceLifecycle

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the OpenAI-compatible HTTP server.",
        discussion: "Settings come from --config (flat YAML), then QWEN_SERVE_* environment variables, then these flags.")

    @Option(help: "A config file: `key: value` lines with the flag names as keys.") var config: String?
    @Flag(name: .customLong("print-config"), help: "Print the effective settings and exit.") var printConfig = false
    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id. [default: default]") var model: String?
    @Option(help: "Address to listen on. [default: 127.0.0.1]") var host: String?
    @Option(help: "Port to listen on (0 picks a free one). [default: 8080]") var port: String?
    @Option(name: .customLong("served-model-name"), help: "The model name clients use (default: from the model file).")
    var servedModelName: String?
    @Option(name: .customLong("kv-cache-gb"), help: "Memory for the KV cache, in GiB. [default: 2]") var kvCacheGB: String?
    @Option(name: .customLong("f32-weights"), help: "Keep f32 copies of quantized/bf16 weights for faster prompts: auto (if they take under half the RAM), yes or no. [default: auto]")
    var f32Weights: String?
    @Option(help: "Products with quantized GGUF weights: auto (int8 for quantized weights on CPUs with AVX-512 VNNI, AVX-VNNI or AVX2, else f32), f32 (as transformers computes them) or int8 (inputs rounded to 8 bits, integer dot products as llama.cpp; on the default model ~2.7× faster prompts, ~2.5× faster batched decoding). [default: auto]")
    var compute: String?
    @Option(name: .customLong("kv-cache-dtype"), help: "How the KV cache stores keys and values: f32, f16 (half the memory and of the bytes attention reads; values rounded to 11 significant bits) or q8_0 (27% of f32; values rounded to 1/254 of each 32's largest). [default: f32]")
    var kvCacheDType: String?
    @Option(help: "Speculative decoding: auto (drafts from the draft model if one is given, else prompt lookup: earlier n-grams of the prompt and output; verified in one forward, used where the cost model expects a gain), ngram (prompt lookup whenever a match is found), draft (the draft model every step) or off. Outputs are the same either way. [default: auto]")
    var speculative: String?
    @Option(name: .customLong("max-draft-tokens"), help: "Drafted tokens per sequence and step at most (1-64). [default: 12]")
    var maxDraftTokens: String?
    @Option(help: "Quantize float weight matrices at load: q8_0, q4_0 or q4_k (ggml's rules; with auto compute they then run in int8). [default: none]")
    var quantize: String?
    @Option(name: .customLong("max-running"), help: "Sequences batched together at most. [default: 64]") var maxRunning: String?
    @Option(name: .customLong("max-waiting"), help: "Requests that may wait; more get HTTP 429. [default: 256]") var maxWaiting: String?
    @Option(name: .customLong("step-tokens"), help: "Tokens per engine step. [default: 512]") var stepTokens: String?
    @Option(name: .customLong("chat-template-args"), help: #"Default chat template arguments as JSON, e.g. '{"enable_thinking":false}'."#)
    var chatTemplateArgs: String?
    @Option(name: .customLong("max-body-mb"), help: "Largest request body, in MiB. [default: 8]") var maxBodyMB: String?
    @Option(name: .customLong("shutdown-grace"), help: "Seconds in-flight requests get on SIGTERM. [default: 30]") var shutdownGrace: String?
    @Option(name: .customLong("api-key"), help: "Require this Bearer key on /v1 routes (repeatable).") var apiKey: [String] = []
    @Option(name: .customLong("api-key-file"), help: "A file of API keys, one per line.") var apiKeyFile: String?
    @Option(name: .customLong("admin-api-key"), help: "A key for the admin routes (adapters, fine-tuning); repeatable. With one set, only admin keys open them.")
    var adminAPIKey: [String] = []
    @Option(name: .customLong("admin-api-key-file"), help: "A file of admin keys, one per line.") var adminAPIKeyFile: String?
    @Option(name: .customLong("adapter"), help: "Serve a LoRA adapter directory (PEFT or mlx-lm) as model NAME: NAME=PATH (repeatable).")
    var adapter: [String] = []
    @Option(name: .customLong("adapter-path"), help: "A LoRA adapter applied to the base model name itself (as mlx_lm.server).")
    var adapterPath: String?
    @Option(name: .customLong("tls-cert-file"), help: "Serve HTTPS with this PEM certificate chain (needs --tls-key-file).") var tlsCertFile: String?
    @Option(name: .customLong("tls-key-file"), help: "The PEM private key of --tls-cert-file.") var tlsKeyFile: String?
    @Option(name: .customLong("max-connections"), help: "Open connections at most; more are closed as they arrive. [default: 1024]") var maxConnections: String?
    @Option(name: .customLong("header-timeout"), help: "Seconds a connection may take to send request headers (also the keep-alive idle limit). [default: 30]") var headerTimeout: String?
    @Option(name: .customLong("body-timeout"), help: "Seconds from a request's headers to the end of its body. [default: 60]") var bodyTimeout: String?
    @Option(name: .customLong("write-timeout"), help: "Seconds a response may wait on a client that does not read; then the connection closes and its work stops. [default: 60]") var writeTimeout: String?
    @Option(name: .customLong("content-special-tokens"), help: "Control-token text in message content: text (plain text, as OpenAI) or tokens (as transformers). [default: text]") var contentSpecialTokens: String?
    @Option(name: .customLong("state-dir"), help: "Where fine-tuning keeps its files, jobs and adapters (SQLite and files). [default: $STATE_DIRECTORY, else ~/.local/state/qwen-serve]") var stateDir: String?
    @Option(name: .customLong("state-db"), help: "Where files, fine-tuning jobs and fine-tuned models live: sqlite (in --state-dir, one machine) or postgres://user[:pass]@host[:port]/db[?sslmode=…], shared by several replicas. [default: sqlite]") var stateDB: String?
    @Option(name: .customLong("state-db-password-file"), help: "Read the database password from this file (systemd credentials, Kubernetes secrets).") var stateDBPasswordFile: String?
    @Option(name: .customLong("node-id"), help: "This replica's name in fine-tuning leases and job events. [default: host name:port]") var nodeID: String?
    @Option(name: .customLong("job-lease"), help: "Seconds a replica's claim on a fine-tuning job holds without a heartbeat; then another replica resumes the job. [default: 30]") var jobLease: String?
    @Option(name: .customLong("train-share"), help: "Share (0–1) of engine time a fine-tuning job may take while requests are waiting; with none waiting it takes all. [default: 0.3]") var trainShare: String?
    @Option(name: .customLong("train-memory-gb"), help: "Memory a fine-tuning job may plan for beside the served model, in GiB; a job that needs more is refused (400). [default: what the system has available]") var trainMemoryGB: String?
    @Option(name: .customLong("max-upload-mb"), help: "Largest file /v1/files accepts, in MiB. [default: 512]") var maxUploadMB: String?
    @Option(name: .customLong("response-retention-days"), help: "Days a stored response (/v1/responses with store) is kept. [default: 30]") var responseRetentionDays: String?
    @Option(name: .customLong("draft-model"), help: "A smaller model with the same tokenizer that drafts tokens for speculative decoding (a directory, .gguf file or hub repo id; e.g. Qwen/Qwen3-0.6B for Qwen/Qwen3-8B).")
    var draftModel: String?
    @Option(help: "The web console at / (chat, fine-tuning, models, server): on or off (API only). [default: on]") var ui: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. [default: info]") var logLevel: String?
    @Option(name: .customLong("log-format"), help: "text (logfmt) or json, one line per event on stderr. [default: text]") var logFormat: String?
    @Option(name: .customLong("log-prompts"), help: "Put prompt text in request log lines (true/false). [default: false]") var logPrompts: String?

    func settings() throws -> ServeSettings {
        var s = ServeSettings()
        if let config { try s.apply(file: config) }
        try s.apply(environment: ProcessInfo.processInfo.environment)
        let flags: [(String, String?)] = [
            ("model", model), ("host", host), ("port", port), ("served-model-name", servedModelName), ("kv-cache-gb", kvCacheGB), ("f32-weights", f32Weights), ("compute", compute), ("kv-cache-dtype", kvCacheDType), ("quantize", quantize),
            ("speculative", speculative), ("max-draft-tokens", maxDraftTokens),
            ("max-running", maxRunning), ("max-waiting", maxWaiting), ("step-tokens", stepTokens),
            ("chat-template-args", chatTemplateArgs), ("max-body-mb", maxBodyMB), ("shutdown-grace", shutdownGrace),
            ("api-key-file", apiKeyFile), ("admin-api-key-file", adminAPIKeyFile), ("adapter-path", adapterPath),
            ("log-level", logLevel), ("log-format", logFormat), ("log-prompts", logPrompts),
            ("tls-cert-file", tlsCertFile), ("tls-key-file", tlsKeyFile),
            ("max-connections", maxConnections), ("header-timeout", headerTimeout), ("body-timeout", bodyTimeout),
            ("write-timeout", writeTimeout), ("content-special-tokens", contentSpecialTokens),
            ("state-dir", stateDir), ("train-share", trainShare), ("max-upload-mb", maxUploadMB), ("train-memory-gb", trainMemoryGB),
            ("response-retention-days", responseRetentionDays), ("ui", ui), ("draft-model", draftModel),
            ("state-db", stateDB), ("state-db-password-file", stateDBPasswordFile), ("node-id", nodeID), ("job-lease", jobLease),
        ]
        for (k, v) in flags { if let v { try s.set(k, v, source: "--\(k)") } }
        for k in apiKey { try s.set("api-key", k, source: "--api-key") }
        for k in adminAPIKey { try s.set("admin-api-key", k, source: "--admin-api-key") }
        for a in adapter { try s.set("adapter", a, source: "--adapter") }
        return s
    }

    func run() async throws {
        // SIGHUP's default action ends the process: ignored until the reload handler is set.
        signal(SIGHUP, SIG_IGN)
        let notifier = SystemdNotifier()
        do {
            var s = try settings()
            if printConfig {
                print(s.rendered, terminator: "")
                return
            }
            try s.validate()
            try s.loadAPIKeys()
            LogfmtHandler.bootstrap(level: Logger.Level(rawValue: s.logLevel) ?? .info, format: LogfmtHandler.Format(rawValue: s.logFormat) ?? .text)
            ProcessLog.logger = Logger(label: "qwen-serve")
            notifier.status("loading \(s.model)")
            let info = try BLAS.load()
            log("OpenBLAS kernels: \(info.coreName)\(info.chosenCoreType.map { " (OPENBLAS_CORETYPE=\($0) chosen for this CPU)" } ?? ""), \(info.threads) threads")
            let path = try ModelLocator.resolve(s.model, log: log)
            let loaded = try LoadedModel.load(path: path, name: s.servedModelName, f32Weights: F32Weights(rawValue: s.f32Weights) ?? .auto,
                                            choice: ComputeChoice(rawValue: s.compute) ?? .auto, quantize: s.quantize.flatMap { QuantizeType(rawValue: $0) })
            let matrices = loaded.model.weights.layers.flatMap { [$0.q, $0.k, $0.v, $0.o, $0.gate, $0.up, $0.down] }
            let repacked = matrices.filter { ($0 as? CompactMatrix)?.computesInt8 == true }.count
            let rest = repacked < matrices.count ? "; the rest in f32" : ""
            log("compute: \(loaded.compute.rawValue) (\(loaded.computeReason))" + (loaded.compute == .int8 ? "; \(repacked) of \(matrices.count) layer matrices in int8 panels\(rest), \(CPUFeatures.int8Kernel) kernels" : ""))
            log("kernels: \(CPUFeatures.level) level for f32 products, attention and activations (this CPU: \(CPUFeatures.hardwareLevel)\(CPUFeatures.level != CPUFeatures.hardwareLevel ? ", capped by QWEN_CPU_LEVEL" : "")), \(CPUFeatures.int8Kernel) int8 kernels")
            if loaded.compute == .int8 && CPUFeatures.int8Kernel == "portable" {
                log("int8 products run their portable C kernel here (no AVX-512 VNNI, AVX-VNNI or AVX2, or QWEN_INT8_KERNEL=portable): far slower than --compute f32", level: .warning)
            }
            if let advice = loaded.floatWeightAdvice { log(advice.message, level: advice.slow ? .warning : .info) }
            var ec = Engine.Config()
            ec.maxRunning = s.maxRunning
            ec.maxWaiting = s.maxWaiting
            ec.stepTokens = s.stepTokens
            ec.kvDType = KVCacheDType(rawValue: s.kvCacheDType) ?? .f32
            ec.speculative = SpeculativeMode(rawValue: s.speculative) ?? .auto
            ec.maxDraftTokens = s.maxDraftTokens
            ec.kvBlocks = Engine.blocks(forBytes: Int(s.kvCacheGB * Double(1 << 30)), config: loaded.model.config, dtype: ec.kvDType)
            let draft = try s.draftModel.map { try Self.loadDraft($0, target: loaded, settings: s) }
            let engine = Engine(model: loaded.model, tokenizer: loaded.tokenizer, config: ec, draft: draft)
            let live = LiveSettings(apiKeys: s.apiKeys, adminKeys: s.adminKeys, chatTemplateArgs: try Self.templateArgs(s))
            let baseAdapter = try s.adapterPath.map { try LoRAAdapter.load(path: $0, config: loaded.model.config) }
            let requestLog = RequestLog(metrics: ServerMetrics(), logPrompts: s.logPrompts)
            let service = try ModelService(name: loaded.name, engine: engine, tokenizer: loaded.tokenizer, live: live,
                                           defaultAdapter: baseAdapter, requestLog: requestLog,
                                           contentSpecialTokens: ContentSpecialTokens(rawValue: s.contentSpecialTokens) ?? .text,
                                           compute: loaded.compute.rawValue)
            let problems = await service.adapters.reconcileStartup(s.adapters.map { ($0.name, $0.path) })
            if let first = problems.first { throw StartupError(description: first) }
            if !s.adapters.isEmpty { log("adapters: \(s.adapters.map(\.name).joined(separator: ", "))") }
            // Fine-tuning: its state directory, held by this server alone (an exclusive lock).
            let env = ProcessInfo.processInfo.environment
            let stateDir = s.stateDir ?? env["STATE_DIRECTORY"]?.split(separator: ":").first.map(String.init)
                ?? (env["XDG_STATE_HOME"] ?? NSHomeDirectory() + "/.local/state") + "/qwen-serve"
            var jobs: FineTuning?
            do {
                try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
                if try StateLock.acquire(stateDir) {
                    let store = try await Self.openStore(s, stateDir: stateDir)
                    let node = s.nodeID ?? "\(Self.hostName()):\(s.port)"
                    let (ft, problems) = try await FineTuning.start(
                        store: store, stateDirectory: stateDir, runner: .init(node: node, lease: s.jobLease, jobsDirectory: stateDir + "/jobs"),
                        engine: engine, tokenizer: loaded.tokenizer, baseName: loaded.name, modelPath: path, adapters: service.adapters)
                    for p in problems { log("fine-tuning: \(p)", level: .warning) }
                    engine.trainShare = s.trainShare
                    ft.manager.memoryLimit = s.trainMemoryGB.map { Int($0 * Double(1 << 30)) }
                    jobs = ft
                    log("fine-tuning state: \(store.backend == "sqlite" ? "SQLite in \(stateDir)" : ServeSettings.redacted(s.stateDB) + " (local caches in \(stateDir))"); node \(node), job lease \(s.jobLease) s")
                } else {
                    log("fine-tuning is off: another qwen-serve holds \(stateDir) (give this one its own --state-dir)", level: .warning)
                }
            } catch let e as StartupError {
                throw e  // a wrong --state-db is the operator's to fix, not a reason to serve without it
            } catch {
                log("fine-tuning is off: the state directory \(stateDir) cannot be used: \(error)", level: .warning)
            }
            let hangup = reloadOnHangup(current: s, live: live, adapters: service.adapters, notifier: notifier, status: "serving \(loaded.name)")
            // The engine loop pets the watchdog (a hung engine gets the service restarted) and reports status.
            let metricsStep = engine.onStep
            engine.onStep = { stats in
                metricsStep?(stats)
                notifier.watchdog()
                let snap = engine.snapshot
                notifier.status("serving \(loaded.name): \(snap.running) running, \(snap.waiting) waiting")
            }
            engine.start()
            var hc = HTTPServer.Config()
            hc.host = s.host
            hc.port = s.port
            hc.maxBodyBytes = s.maxBodyMB << 20
            hc.tlsCertificateFile = s.tlsCertFile
            hc.tlsKeyFile = s.tlsKeyFile
            hc.limits.maxConnections = s.maxConnections
            hc.limits.headerTimeout = s.headerTimeout
            hc.limits.bodyTimeout = s.bodyTimeout
            hc.limits.writeTimeout = s.writeTimeout
            let scheme = s.tlsCertFile == nil ? "http" : "https"
            let name = loaded.name, listenHost = s.host, positions = ec.kvBlocks * ec.blockSize, kvType = ec.kvDType.rawValue
            hc.maxUploadBytes = s.maxUploadMB << 20
            hc.responseRetention = Int(s.responseRetentionDays * 86400)
            hc.console = s.ui
            // Stored responses live beside the fine-tuning state, in the directory this server holds.
            let http = await HTTPServer(service: service, config: hc, jobs: jobs, stateDirectory: jobs == nil ? nil : stateDir)
            let app: any Service
            if let fd = try SocketActivation.listeningSocket() {
                // systemd opened the port (qwen-serve.socket): adopt it instead of binding host:port.
                let local = Self.localAddress(fd)
                app = try http.makeActivatedService(fd: fd) { port in
                    log("serving \(name) on \(scheme)://\(local.host):\(port) (socket from systemd; KV cache: \(positions) positions, \(kvType))")
                    notifier.ready(status: "serving \(name) on \(local.host):\(port)")
                }
            } else {
                app = try http.makeApplication { port in
                    log("serving \(name) on \(scheme)://\(listenHost):\(port) (KV cache: \(positions) positions, \(kvType))")
                    notifier.ready(status: "serving \(name) on \(listenHost):\(port)")
                }
            }
            // On SIGTERM/SIGINT the drain service (shut down first) tells systemd, lets the
            // engine give running requests the grace period and then cancel the rest; the
            // HTTP server meanwhile stops accepting and waits for its handlers, which end
            // as their requests do; last, registered background work gets what is left of it.
            let drain = DrainService(engine: engine, notifier: notifier, grace: s.shutdownGrace, beforeDrain: { await http.stopBatches() })
            let backgroundDrain = BackgroundDrainService(background: service.adapters.background, grace: s.shutdownGrace)
            var logger = Logger(label: "qwen-serve")
            logger.logLevel = .warning
            let group = ServiceGroup(configuration: .init(services: [.init(service: backgroundDrain), .init(service: app), .init(service: drain)],
                                                          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
            hangup.cancel()
            engine.shutdown(grace: 0)
            // The engine thread has stopped: the running job checkpoints and goes back to the queue.
            await jobs?.runner.shutdown(grace: s.shutdownGrace)
            log("stopped")
        } catch {
            log("qwen-serve: \(error)", level: .error)
            throw ExitCode(1)
        }
    }
}

extension Serve {
    /// The kernel's host name (no DNS lookup, unlike ProcessInfo.hostName).
    static func hostName() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        return String(cString: buf)
    }

    /// The store `--state-db` names: SQLite in the state directory, or PostgreSQL (its schema
    /// migrated now when it answers; until it does, the fine-tuning routes answer 503).
    static func openStore(_ s: ServeSettings, stateDir: String) async throws -> any FineTuningStore {
        guard s.stateDB != "sqlite" else { return try SQLiteFineTuningStore(directory: stateDir) }
        var logger = Logger(label: "qwen-serve.postgres")
        logger.logLevel = .warning
        let store: PostgresFineTuningStore
        do {
            store = try PostgresFineTuningStore(url: s.stateDB, passwordFile: s.stateDBPasswordFile, cacheDirectory: stateDir + "/cache/files",
                                                logger: logger)
        } catch { throw StartupError(description: "\(error)") }
        do { try await store.migrate() } catch StoreError.corrupt(let m) { throw StartupError(description: m) } catch {
            log("the state database does not answer yet (\(error)); fine-tuning waits for it", level: .warning)
            Task {
                while (try? await store.migrate()) == nil { try? await Task.sleep(for: .seconds(5)) }
                log("the state database answers: its schema is up to date")
            }
        }
        return store
    }

    /// The draft model of `--draft-model`, loaded as the served model is (its compute mode too),
    /// after checking that it reads and writes the same tokens.
    static func loadDraft(_ spec: String, target: LoadedModel, settings s: ServeSettings) throws -> QwenModel {
        let path = try ModelLocator.resolve(spec, log: log)
        let d = try LoadedModel.load(path: path, name: nil, f32Weights: F32Weights(rawValue: s.f32Weights) ?? .auto,
                                     choice: ComputeChoice(rawValue: s.compute) ?? .auto, quantize: s.quantize.flatMap { QuantizeType(rawValue: $0) })
        if let problem = DraftCheck.mismatch(draft: d.tokenizer, target: target.tokenizer) {
            throw StartupError(description: "--draft-model \(spec): \(problem); a draft model must share the served model's tokenizer")
        }
        let c = d.model.config
        log("draft model: \(d.name) (\(c.layers) layers, hidden \(c.hiddenSize), context \(c.maxPositions); compute \(d.compute.rawValue))")
        return d.model
    }

    /// The address a socket is bound to, for the log line.
    static func localAddress(_ fd: CInt) -> (host: String, port: Int) {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } } == 0
        guard ok else { return ("?", 0) }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST)), port = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let rc = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, len, &host, socklen_t(host.count), &port, socklen_t(port.count), NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard rc == 0 else { return ("?", 0) }
        return (String(cString: host), Int(String(cString: port)) ?? 0)
    }

    static func templateArgs(_ s: ServeSettings) throws -> [(String, JSONValue)] {
        try s.chatTemplateArgs.map { try JSONValue.parse($0).object ?? [] } ?? []
    }

    /// SIGHUP re-reads the settings (file, environment, flags) and applies what can change
    /// live: the API keys and the default chat-template arguments. A bad file keeps the
    /// old settings and says why.
    func reloadOnHangup(current: ServeSettings, live: LiveSettings, adapters: AdapterRegistry, notifier: SystemdNotifier, status: String) -> DispatchSourceSignal {
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        let command = self
        // Reloads run one at a time, each against the settings the last good one applied.
        let state = ReloadState(current)
        source.setEventHandler {
            notifier.reloading()
            Task {
                await state.lock()
                do {
                    // The whole file, the environment and the flags parse and validate, or nothing changes.
                    var s = try command.settings()
                    try s.validate()
                    try s.loadAPIKeys()
                    if let why = await state.settings.reloadRefusal(s) { throw StartupError(description: why) }
                    let args = try Self.templateArgs(s)
                    await state.set(s)
                    live.update(apiKeys: s.apiKeys, adminKeys: s.adminKeys, chatTemplateArgs: args)
                    let problems = await adapters.reconcileStartup(s.adapters.map { ($0.name, $0.path) })
                    for p in problems { log("reload: \(p) (left as it was)") }
                    log("reloaded: \(s.apiKeys.count) API key(s), \(s.adminKeys.count) admin key(s), adapters: \(adapters.all.map(\.name).joined(separator: ", "))")
                } catch {
                    log("reload failed, keeping the previous settings: \(error)", level: .error)
                }
                await state.unlock()
                notifier.reloaded(status: status)
            }
        }
        source.resume()
        return source
    }
}

/// The settings the last successful reload applied, and a turn for reloads.
actor ReloadState {
    private(set) var settings: ServeSettings
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    init(_ s: ServeSettings) { settings = s }
    func set(_ s: ServeSettings) { settings = s }
    func lock() async {
        if !busy { busy = true; return }
        await withCheckedContinuation { waiters.append($0) }
    }
    func unlock() {
        if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
    }
}

/// One server per state directory: an exclusive flock on its `lock` file, held for life.
enum StateLock {
    nonisolated(unsafe) static var fd: Int32 = -1
    static func acquire(_ dir: String) throws -> Bool {
        let f = open(dir + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard f >= 0 else { throw StartupError(description: "\(dir)/lock: \(String(cString: strerror(errno)))") }
        guard flock(f, LOCK_EX | LOCK_NB) == 0 else {
            close(f)
            return false
        }
        fd = f
        return true
    }
}

struct StartupError: Error, CustomStringConvertible {
    let description: String
}

/// Waits for the graceful-shutdown signal, then drains the engine in the background.
struct DrainService: Service {
    let engine: Engine
    let notifier: SystemdNotifier
    let grace: Double
    /// Runs as the drain begins (batch work stops at once and is handed back; it resumes at the
    /// next start or on another replica).
    var beforeDrain: @Sendable () async -> Void = {}

    func run() async throws {
        try? await gracefulShutdown()
        await beforeDrain()
        log("stopping: in-flight requests and background work get \(grace) s to finish")
        notifier.stopping(status: "draining")
        let (engine, grace) = (engine, grace)
        Thread.detachNewThread { engine.shutdown(grace: grace) }
    }
}

/// Shut down last (after the HTTP server has stopped accepting and finished its requests):
/// waits for registered background work, up to the grace period.
struct BackgroundDrainService: Service {
    let background: BackgroundWork
    let grace: Double

    func run() async throws {
        try? await gracefulShutdown()
        let left = await background.drain(timeout: grace)
        if !left.isEmpty { log("stopping with background work unfinished: \(left.joined(separator: ", "))", level: .warning) }
    }
}
