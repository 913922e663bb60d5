import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import NIOCore
import NIOSSL
import Logging
import QwenChat
import QwenEngine
import QwenKernels

/// The HTTP front: routes, body limits, and every error as OpenAI-style JSON.
public struct HTTPServer {
    public struct Config: Sendable {
        public var host = "127.0.0.1"
        public var port = 8080
        public var maxBodyBytes = 8 << 20
        /// PEM files; with both set the server speaks HTTPS only.
        public var tlsCertificateFile: String?
        public var tlsKeyFile: String?
        /// Connection count and per-connection timeouts.
        public var limits = ConnectionLimits()
        /// Largest upload /v1/files takes (streamed to disk).
        public var maxUploadBytes = 512 << 20
        /// Stored responses are deleted after this many seconds.
        public var responseRetention = 30 * 86400
        /// The web console at `/` (`--ui`).
        public var console = true
        public init() {}
    }

    let service: ModelService
    let config: Config
    /// Fine-tuning (files and jobs), when this server has a state directory.
    let jobs: FineTuning?
    /// Stored responses, when this server has a state directory.
    let responses: ResponseStore?
    let backgroundResponses = BackgroundResponses()
    let responsesController: ResponsesController
    /// The Batch API's runner, when this server has a state directory.
    let batches: BatchRunner?

    public init(service: ModelService, config: Config, jobs: FineTuning? = nil, stateDirectory: String? = nil) async {
        self.service = service
        self.config = config
        self.jobs = jobs
        let log = Logger(label: "qwen-serve")
        // Responses and batches live where the fine-tuning state does: SQLite in the state
        // directory, or the PostgreSQL database the replicas share.
        let shared = jobs?.store as? PostgresFineTuningStore
        let node = jobs?.runner.settings.node ?? "local", lease = jobs?.runner.settings.lease ?? 30
        var store: ResponseStore?
        if let dir = stateDirectory {
            do {
                let s: ResponseStore = try shared.map { PostgresResponseStore(database: $0, node: node, lease: lease) }
                    ?? SQLiteResponseStore(directory: dir)
                do {
                    let n = try await s.failUnfinished(message: "the server stopped while this response ran")
                    if n > 0 { log.warning("\(n) background responses were left unfinished by the last run: marked failed") }
                    _ = try await s.purge(createdBefore: Int(Date().timeIntervalSince1970) - config.responseRetention)
                } catch let e as StoreError {
                    // The shared database does not answer yet: the routes answer 503 until it does.
                    log.warning("stored responses: \(e)")
                }
                store = s
            } catch {
                log.warning("stored responses are off: \(dir) cannot hold them: \(error)")
            }
        }
        responses = store
        if let store { backgroundResponses.keepHeld(in: store) }
        responsesController = ResponsesController(service: service, store: store, runs: backgroundResponses, limit: config.maxBodyBytes,
                                                  retention: config.responseRetention)
        var runner: BatchRunner?
        if let dir = stateDirectory, let jobs {
            do {
                let batchStore: BatchStore = try shared.map { PostgresBatchStore(database: $0) } ?? SQLiteBatchStore(directory: dir)
                runner = BatchRunner(store: batchStore, files: jobs.store, scratch: jobs.stateDirectory + "/uploads", service: service,
                                     responses: responsesController, concurrency: service.engine.config.maxRunning,
                                     maxFileBytes: config.maxUploadBytes, node: node, lease: lease)
            } catch {
                log.warning("the Batch API is off: \(dir) cannot hold batches: \(error)")
            }
        }
        batches = runner
        runner?.start()
    }

    /// Shutdown: batch lines in flight stop now (unrecorded, they run again at the next start or
    /// on another replica) instead of holding the drain; the batch is handed back first.
    public func stopBatches() async { await batches?.stop() }

    public struct TLSError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The HTTP/1.1 server, wrapped in TLS when certificate and key are configured.
    func serverBuilder() throws -> HTTPServerBuilder {
        guard let tls = try tlsConfiguration() else { return .http1(configuration: http1Configuration) }
        do { return try .tls(.http1(configuration: http1Configuration), tlsConfiguration: tls) } catch {
            throw TLSError(description: "\(config.tlsCertificateFile ?? ""), \(config.tlsKeyFile ?? ""): the certificate and key cannot be used together (\(error))")
        }
    }

    func tlsConfiguration() throws -> TLSConfiguration? {
        guard let certFile = config.tlsCertificateFile, let keyFile = config.tlsKeyFile else { return nil }
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certFile) } catch {
            throw TLSError(description: "\(certFile): not a readable PEM certificate (\(error))")
        }
        guard !chain.isEmpty else { throw TLSError(description: "\(certFile): holds no certificate") }
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: keyFile, format: .pem) } catch {
            throw TLSError(description: "\(keyFile): not a readable PEM private key (\(error))")
        }
        return TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
    }

    public func makeApplication(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) throws -> some ApplicationProtocol {
        var logger = Logger(label: "qwen-serve.http")
        logger.logLevel = .warning
        return Application(router: makeRouter(), server: try serverBuilder(),
                           configuration: .init(address: .hostname(config.host, port: config.port), serverName: "qwen-serve"),
                           onServerRunning: { ch in await onRunning(ch.localAddress?.port ?? 0) }, logger: logger)
    }

    /// HTTP/1.1 with a `ConnectionGuard` on every connection.
    var http1Configuration: HTTP1Channel.Configuration {
        let limits = config.limits
        return HTTP1Channel.Configuration(additionalChannelHandlers: [ConnectionGuard(limits: limits)])
    }

    /// Every route. Permissions belong to route groups: each group's middleware runs only
    /// for the routes the router matched in it, whatever spelling of the path was sent.
    func makeRouter() -> Router<QwenRequestContext> {
        let router = Router(context: QwenRequestContext.self)
        router.middlewares.add(ErrorMiddleware(metrics: service.metrics))
        let s = service
        let limit = config.maxBodyBytes

        // Open to everyone: liveness and Prometheus metrics (counts only, no request content).
        for path in ["/health", "/healthz"] {
            router.get(RouterPath(stringLiteral: path)) { _, _ -> Response in
                ModelService.jsonResponse(.object([("status", .string("ok"))]))
            }
        }
        // "Jobs available": the fine-tuning store answers (inference needs none of it, so
        // readiness for traffic stays /health; this one is for monitors and operators).
        let fineTuning = jobs
        router.get("/health/jobs") { _, _ -> Response in
            guard let ft = fineTuning else { throw Self.fineTuningOff }
            _ = try await ft.store.jobs(after: nil, limit: 1)
            return ModelService.jsonResponse(.object([("status", .string("ok")), ("store", .string(ft.store.backend)),
                                                      ("runner", .string(ft.manager.runnerState))]))
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: s.metrics.render(engine: s.engine.snapshot, adapters: s.adapters.all, fineTuning: fineTuning?.manager.runnerState))))
        }

        // The web console: static assets, open to everyone (they hold no data; every call the
        // page makes carries the key the user types into it).
        if config.console { ConsoleController().addRoutes(to: router) }

        // Inference: any API key (or none, when no keys are configured).
        let api = router.group("v1").add(middleware: APIKeyAuth(live: service.live, permission: .user))
        InferenceController(service: s, limit: limit).addRoutes(to: api)
        responsesController.addRoutes(to: api)

        // Token counts, at the root as vLLM and llama.cpp serve them.
        TokenizeController(service: s, limit: limit).addRoutes(to: router.group().add(middleware: APIKeyAuth(live: service.live, permission: .user)))

        // What changes what is served: an admin key when admin keys are configured.
        let admin = router.group("v1").add(middleware: APIKeyAuth(live: service.live, permission: .admin))
        admin.get("adapters") { _, _ -> Response in s.listAdapters() }
        admin.post("adapters") { req, _ -> Response in
            try await s.loadAdapter(try await Self.body(req, limit: limit), vllm: false)
        }
        admin.delete("adapters/:name") { _, ctx -> Response in
            try await s.unloadAdapter(name: ctx.pathParameter("name"), vllm: false)
        }
        admin.post("load_lora_adapter") { req, _ -> Response in
            try await s.loadAdapter(try await Self.body(req, limit: limit), vllm: true)
        }
        admin.post("unload_lora_adapter") { req, _ -> Response in
            let f = try RequestFields(try await Self.body(req, limit: limit))
            guard let n = try f.string("lora_name") else { throw APIError.badParam("lora_name", "'lora_name' is required") }
            return try await s.unloadAdapter(name: n, vllm: true)
        }
        // Fine-tuning spends the machine and changes what is served: admin routes too.
        if let jobs {
            FilesController(store: jobs.store, uploadsDirectory: jobs.stateDirectory + "/uploads", tokenizer: s.tokenizer,
                            maxUploadBytes: config.maxUploadBytes).addRoutes(to: admin)
            JobsController(manager: jobs.manager, models: jobs.models, service: s, limit: limit).addRoutes(to: admin)
        }
        // Batches spend the machine for hours, as fine-tuning does: admin routes too.
        if let batches {
            BatchesController(runner: batches, limit: limit).addRoutes(to: admin)
        } else {
            for path in ["batches", "batches/:id", "batches/:id/cancel"] {
                admin.on(RouterPath(stringLiteral: path), method: .get) { _, _ -> Response in throw Self.batchesOff }
                admin.on(RouterPath(stringLiteral: path), method: .post) { _, _ -> Response in throw Self.batchesOff }
            }
        }
        if jobs == nil {
            for path in ["files", "files/:id", "files/:id/content", "fine_tuning/jobs", "fine_tuning/jobs/:id"] {
                admin.on(RouterPath(stringLiteral: path), method: .get) { _, _ -> Response in throw Self.fineTuningOff }
                admin.on(RouterPath(stringLiteral: path), method: .post) { _, _ -> Response in throw Self.fineTuningOff }
            }
        }
        return router
    }

    static let batchesOff = APIError(.serviceUnavailable, "the Batch API is off on this server (no usable --state-dir; see its log)",
                                     type: "server_error", code: "batches_unavailable")

    static let fineTuningOff = APIError(.serviceUnavailable, "fine-tuning is off on this server (no usable --state-dir; see its log)",
                                        type: "server_error", code: "fine_tuning_unavailable")

    static func body(_ req: Request, limit: Int) async throws -> JSONValue {
        var req = req
        let buf: ByteBuffer
        do { buf = try await req.collectBody(upTo: limit) } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, "the request body is larger than \(limit) bytes", code: "request_too_large")
        } catch {
            // The client closed the connection or stopped sending: nobody will read an answer.
            throw APIError(.badRequest, "the request body could not be read (the client went away)", code: "incomplete_body")
        }
        do { return try JSONValue.parse(Array(buf.readableBytesView)) } catch {
            throw APIError(.badRequest, "the request body is not valid JSON: \(error)")
        }
    }
}

/// `{"object": "list", "data": [models]}`.
struct ModelList: Encodable {
    var object = "list"
    var data: [ModelObject]
}

/// Turns every thrown error, and every 404/405 from the router, into an OpenAI-style body,
/// and counts each answer under the route the router matched.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics

    func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var status: Int
        var response: Response
        do {
            response = try await next(req, context)
            status = Int(response.status.code)
        } catch let e as APIError {
            status = e.status.code
            response = ModelService.jsonResponse(e.json, status: e.status, headers: e.headers)
        } catch let e as StoreError {
            // The state database (fine-tuning, files) is down: inference goes on; these routes say so.
            let a = APIError(.serviceUnavailable, "\(e); try again shortly", code: "state_database_unavailable")
            status = a.status.code
            response = ModelService.jsonResponse(a.json, status: a.status, headers: [.retryAfter: "5"])
        } catch let e as HTTPError {
            status = e.status.code
            let msg: String
            switch e.status {
            case .notFound: msg = "no route for \(req.method) \(req.uri.path)"
            case .methodNotAllowed: msg = "\(req.method) is not allowed on \(req.uri.path)"
            case .contentTooLarge: msg = "the request body is too large"
            default: msg = e.status.reasonPhrase
            }
            response = ModelService.jsonResponse(APIError(e.status, msg).json, status: e.status)
        } catch {
            // Internal detail stays in the log, not in the answer.
            let id = IDs.make("err-")
            Logger(label: "qwen-serve.http").error("internal error \(id) on \(req.method) \(context.endpointPath ?? "?"): \(error)")
            status = 500
            response = ModelService.jsonResponse(APIError(.internalServerError, "internal server error (\(id))").json, status: .internalServerError)
        }
        // The matched route's pattern: no label per spelling or per adapter name.
        let endpoint = context.endpointPath.map { $0.hasPrefix("/") ? $0 : "/" + $0 } ?? "other"
        metrics.countRequest(endpoint: endpoint, status: status)
        return response
    }
}
