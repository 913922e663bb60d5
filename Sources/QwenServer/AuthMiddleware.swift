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

struct AuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let live: LiveSettings

    func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let digests = live.apiKeyDigests
        guard !digests.isEmpty, req.uri.path.hasPrefix("/v1/") else { return try await next(req, context) }
        var given: [UInt8]? = nil
        if let h = req.headers[.authorization], h.hasPrefix("Bearer ") {
            given = apiKeyDigest(String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces))
        }
        var ok: UInt8 = 0
        if let g = given {
            for d in digests {
                var diff: UInt8 = 0
                for i in 0..<32 { diff |= d[i] ^ g[i] }
                ok |= diff == 0 ? 1 : 0
            }
        }
        guard ok == 1 else {
            var e = APIError(.unauthorized, given == nil ? "Missing API key: send 'Authorization: Bearer <key>'" : "Incorrect API key provided",
                             type: "invalid_request_error", code: "invalid_api_key")
            e.headers[.wwwAuthenticate] = "Bearer"
            throw e
        }
        return try await next(req, context)
    }
}
