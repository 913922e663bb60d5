import Foundation
import Hummingbird
import QwenRuntime

/// Optional API keys: `Authorization: Bearer <key>` on every /v1 route. Keys are compared
/// by their SHA-256 digests in constant time, so timing says nothing about a key.
func apiKeyDigest(_ s: String) -> [UInt8] {
    var h = SHA256()
    h.update(Array(s.utf8))
    return h.finalize()
}

/// Two permissions. With admin keys configured, the admin routes (adapters, and whatever
/// else changes what the server serves) take only an admin key, which also opens every
/// other route; without them, the admin routes follow the ordinary rule.
struct AuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let live: LiveSettings

    static func isAdminRoute(_ path: String) -> Bool {
        path == "/v1/adapters" || path.hasPrefix("/v1/adapters/") || path == "/v1/load_lora_adapter" || path == "/v1/unload_lora_adapter"
            || path.hasPrefix("/v1/fine_tuning") || path == "/v1/files" || path.hasPrefix("/v1/files/")
    }

    static func matches(_ given: [UInt8], _ digests: [[UInt8]]) -> Bool {
        var ok: UInt8 = 0
        for d in digests {
            var diff: UInt8 = 0
            for i in 0..<32 { diff |= d[i] ^ given[i] }
            ok |= diff == 0 ? 1 : 0
        }
        return ok == 1
    }

    func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard req.uri.path.hasPrefix("/v1/") else { return try await next(req, context) }
        let keys = live.apiKeyDigests, admin = live.adminKeyDigests
        let adminRoute = Self.isAdminRoute(req.uri.path)
        guard !keys.isEmpty || !admin.isEmpty else { return try await next(req, context) }
        var given: [UInt8]? = nil
        if let h = req.headers[.authorization], h.hasPrefix("Bearer ") {
            given = apiKeyDigest(String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces))
        }
        let isAdmin = given.map { Self.matches($0, admin) } ?? false
        let isUser = given.map { Self.matches($0, keys) } ?? false
        if adminRoute && !admin.isEmpty {
            if isAdmin { return try await next(req, context) }
            if isUser {
                throw APIError(.forbidden, "this API key may not change adapters or fine-tuning jobs; use an admin key",
                               type: "permission_error", code: "insufficient_permissions")
            }
        } else if isUser || isAdmin || keys.isEmpty {
            return try await next(req, context)
        }
        var e = APIError(.unauthorized, given == nil ? "Missing API key: send 'Authorization: Bearer <key>'" : "Incorrect API key provided",
                         type: "invalid_request_error", code: "invalid_api_key")
        e.headers[.wwwAuthenticate] = "Bearer"
        throw e
    }
}
