import Foundation
import Hummingbird
import QwenRuntime

/// Optional API keys: `Authorization: Bearer <key>`. Keys are compared by their SHA-256
/// digests in constant time, so timing says nothing about a key.
func apiKeyDigest(_ s: String) -> [UInt8] {
    var h = SHA256()
    h.update(Array(s.utf8))
    return h.finalize()
}

/// The permission a route group needs. It is attached to the group (never decided from
/// the request's path), so it runs only after the router has matched a route of that
/// group: no spelling of a path reaches a handler without its group's check.
/// - `user`: with API keys configured, an API key or an admin key.
/// - `admin`: with admin keys configured, only an admin key (an API key gets 403);
///   without them, the `user` rule.
struct APIKeyAuth: RouterMiddleware {
    typealias Context = QwenRequestContext
    enum Permission { case user, admin }
    let live: LiveSettings
    let permission: Permission

    static func matches(_ given: [UInt8], _ digests: [[UInt8]]) -> Bool {
        var ok: UInt8 = 0
        for d in digests {
            var diff: UInt8 = 0
            for i in 0..<32 { diff |= d[i] ^ given[i] }
            ok |= diff == 0 ? 1 : 0
        }
        return ok == 1
    }

    /// The key of an `Authorization` header: the scheme is case-insensitive (RFC 9110);
    /// an empty key is no key.
    static func bearerKey(_ header: String?) -> String? {
        guard let h = header else { return nil }
        let parts = h.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let key = parts[1].trimmingCharacters(in: .whitespaces)
        return key.isEmpty ? nil : key
    }

    /// A prefix-cache salt from a key's digest.
    static func salt(_ digest: [UInt8]) -> UInt64 {
        var s: UInt64 = 0
        for i in 0..<8 { s = s << 8 | UInt64(digest[i]) }
        return s | 1
    }

    func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let keys = live.apiKeyDigests, admin = live.adminKeyDigests
        var context = context
        guard !keys.isEmpty || !admin.isEmpty else { return try await next(req, context) }
        let given = Self.bearerKey(req.headers[.authorization]).map(apiKeyDigest)
        let isAdmin = given.map { Self.matches($0, admin) } ?? false
        let isUser = given.map { Self.matches($0, keys) } ?? false
        context.caller = Caller(cacheSalt: 0, seesServerPaths: admin.isEmpty)
        if isAdmin || isUser, let given {
            context.caller = Caller(cacheSalt: Self.salt(given), seesServerPaths: isAdmin || admin.isEmpty,
                                    owner: given.prefix(16).map { String(format: "%02x", $0) }.joined())
        }
        switch permission {
        case .admin where !admin.isEmpty:
            if isAdmin { return try await next(req, context) }
            if isUser {
                throw APIError(.forbidden, "this API key may not change adapters or fine-tuning jobs; use an admin key",
                               type: "permission_error", code: "insufficient_permissions")
            }
        default:
            // No API keys but admin keys: ordinary routes stay open to everyone.
            if isUser || isAdmin || keys.isEmpty { return try await next(req, context) }
        }
        var e = APIError(.unauthorized, given == nil ? "Missing API key: send 'Authorization: Bearer <key>'" : "Incorrect API key provided",
                         type: "invalid_request_error", code: "invalid_api_key")
        e.headers[.wwwAuthenticate] = "Bearer"
        throw e
    }
}
