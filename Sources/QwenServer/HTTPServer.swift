import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import NIOSSL
import Logging
import QwenChat
import QwenEngine

/// The HTTP front: routes, body limits, and every error as OpenAI-style JSON.
public struct HTTPServer {
    public struct Config: Sendable {
        public var host = "127.0.0.1"
        public var port = 8080
        public var maxBodyBytes = 8 << 20
        /// PEM files; with both set the server speaks HTTPS only.
        public var tlsCertificateFile: String?
        public var tlsKeyFile: String?
        public init() {}
    }

    let service: ModelService
    let config: Config

    public init(service: ModelService, config: Config) {
        self.service = service
        self.config = config
    }

    public struct TLSError: Error, CustomStringConvertible {
        public let description: String
    }

    /// The HTTP/1.1 server, wrapped in TLS when certificate and key are configured.
    func serverBuilder() throws -> HTTPServerBuilder {
        guard let tls = try tlsConfiguration() else { return .http1() }
        do { return try .tls(.http1(), tlsConfiguration: tls) } catch {
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

    /// Every route, behind the error and authentication middleware.
    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(ErrorMiddleware(metrics: service.metrics))
        router.middlewares.add(AuthMiddleware(live: service.live))
        let s = service
        let limit = config.maxBodyBytes
        router.post("/v1/chat/completions") { req, _ -> Response in
            try await s.chatCompletions(try await Self.body(req, limit: limit))
        }
        router.post("/v1/completions") { req, _ -> Response in
            try await s.completions(try await Self.body(req, limit: limit))
        }
        router.get("/v1/models") { _, _ -> Response in
            let models = [s.modelJSON] + s.adapters.all.map(s.adapterModelJSON)
            return ModelService.jsonResponse(.object([("object", .string("list")), ("data", .array(models))]))
        }
        router.get("/v1/models/:id") { _, ctx -> Response in
            let id = ctx.parameters.get("id") ?? ""
            if id == s.name { return ModelService.jsonResponse(s.modelJSON) }
            if let e = s.adapters.get(id) { return ModelService.jsonResponse(s.adapterModelJSON(e)) }
            throw APIError(.notFound, "The model '\(id)' does not exist", param: "model", code: "model_not_found")
        }
        // LoRA adapters (admin routes when admin keys are configured).
        router.get("/v1/adapters") { _, _ -> Response in s.listAdapters() }
        router.post("/v1/adapters") { req, _ -> Response in
            try await s.loadAdapter(try await Self.body(req, limit: limit), vllm: false)
        }
        router.delete("/v1/adapters/:name") { _, ctx -> Response in
            try await s.unloadAdapter(name: ctx.parameters.get("name") ?? "", vllm: false)
        }
        router.post("/v1/load_lora_adapter") { req, _ -> Response in
            try await s.loadAdapter(try await Self.body(req, limit: limit), vllm: true)
        }
        router.post("/v1/unload_lora_adapter") { req, _ -> Response in
            let f = try RequestFields(try await Self.body(req, limit: limit))
            guard let n = try f.string("lora_name") else { throw APIError.badParam("lora_name", "'lora_name' is required") }
            return try await s.unloadAdapter(name: n, vllm: true)
        }
        for path in ["/health", "/healthz"] {
            router.get(RouterPath(stringLiteral: path)) { _, _ -> Response in
                ModelService.jsonResponse(.object([("status", .string("ok"))]))
            }
        }
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: s.metrics.render(engine: s.engine.snapshot, adapters: s.adapters.all.count))))
        }
        return router
    }

    static func body(_ req: Request, limit: Int) async throws -> JSONValue {
        var req = req
        let buf: ByteBuffer
        do { buf = try await req.collectBody(upTo: limit) } catch {
            throw APIError(.contentTooLarge, "the request body is larger than \(limit) bytes", code: "request_too_large")
        }
        do { return try JSONValue.parse(Array(buf.readableBytesView)) } catch {
            throw APIError(.badRequest, "the request body is not valid JSON: \(error)")
        }
    }
}

extension ModelService {
    var modelJSON: JSONValue {
        .object([("id", .string(name)), ("object", .string("model")), ("created", .int(created)), ("owned_by", .string("qwen-serve")),
                 ("root", .string(name)), ("parent", .null), ("max_model_len", .int(contextLimit))])
    }
}

/// Turns every thrown error, and every 404/405 from the router, into an OpenAI-style body.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics

    /// The endpoint label for a path with a parameter, or one of the vLLM adapter routes.
    static func routeName(_ path: String) -> String {
        if path.hasPrefix("/v1/models/") { return "/v1/models/{id}" }
        if path == "/v1/adapters" || path == "/v1/load_lora_adapter" || path == "/v1/unload_lora_adapter" { return path }
        if path.hasPrefix("/v1/adapters/") { return "/v1/adapters/{name}" }
        return "other"
    }

    func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let endpoint = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/healthz", "/metrics"]
            .first { req.uri.path == $0 } ?? Self.routeName(req.uri.path)
        do {
            let r = try await next(req, context)
            metrics.countRequest(endpoint: endpoint, status: Int(r.status.code))
            return r
        } catch let e as APIError {
            metrics.countRequest(endpoint: endpoint, status: e.status.code)
            return ModelService.jsonResponse(e.json, status: e.status, headers: e.headers)
        } catch let e as HTTPError {
            metrics.countRequest(endpoint: endpoint, status: e.status.code)
            let msg: String
            switch e.status {
            case .notFound: msg = "no route for \(req.method) \(req.uri.path)"
            case .methodNotAllowed: msg = "\(req.method) is not allowed on \(req.uri.path)"
            case .contentTooLarge: msg = "the request body is too large"
            default: msg = e.body ?? e.status.reasonPhrase
            }
            return ModelService.jsonResponse(APIError(e.status, msg).json, status: e.status)
        } catch {
            metrics.countRequest(endpoint: endpoint, status: 500)
            return ModelService.jsonResponse(APIError(.internalServerError, "\(error)").json, status: .internalServerError)
        }
    }
}
