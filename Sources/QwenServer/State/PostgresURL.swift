import Foundation
import NIOSSL
import PostgresNIO

/// `--state-db postgres://user:pass@host:port/db?sslmode=…` as postgres-nio's configuration.
/// sslmode as libpq reads it: disable; allow/prefer (TLS when the server offers it, not
/// verified); require (TLS, not verified); verify-ca / verify-full (TLS, verified against
/// `sslrootcert` or the system's roots; verify-full also checks the host name). The default is
/// prefer. `host=/dir` in the query selects a Unix socket directory.
public enum PostgresURL {
    public struct URLError: Error, CustomStringConvertible {
        public let description: String
    }

    public static func configuration(_ url: String, passwordFile: String?) throws -> PostgresClient.Configuration {
        func bad(_ why: String) -> URLError { URLError(description: "--state-db: \(why)") }
        guard let c = URLComponents(string: url), c.scheme == "postgres" || c.scheme == "postgresql" else { throw bad("not a postgres:// URL") }
        let query = Dictionary((c.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { _, b in b })
        guard let user = c.user, !user.isEmpty else { throw bad("name the user (postgres://USER@host/db)") }
        let db = String(c.path.drop { $0 == "/" })
        guard !db.isEmpty else { throw bad("name the database (postgres://user@host/DB)") }
        var password = c.password
        if let f = passwordFile {
            guard let d = FileManager.default.contents(atPath: f) else { throw URLError(description: "--state-db-password-file \(f): cannot be read") }
            password = String(decoding: d, as: UTF8.self).trimmingCharacters(in: .newlines)
        }
        if let socketDir = query["host"], socketDir.hasPrefix("/") {
            return .init(unixSocketPath: socketDir + "/.s.PGSQL.\(c.port ?? 5432)", username: user, password: password, database: db)
        }
        guard let host = c.host, !host.isEmpty else { throw bad("name the host (postgres://user@HOST/db)") }
        var tls: PostgresClient.Configuration.TLS
        let mode = query["sslmode"] ?? "prefer"
        var t = TLSConfiguration.makeClientConfiguration()
        switch mode {
        case "disable":
            tls = .disable
        case "allow", "prefer":
            t.certificateVerification = .none
            tls = .prefer(t)
        case "require":
            t.certificateVerification = .none
            tls = .require(t)
        case "verify-ca", "verify-full":
            t.certificateVerification = mode == "verify-full" ? .fullVerification : .noHostnameVerification
            if let root = query["sslrootcert"] {
                guard FileManager.default.isReadableFile(atPath: root) else { throw bad("sslrootcert \(root) cannot be read") }
                t.trustRoots = .file(root)
            }
            tls = .require(t)
        default:
            throw bad("sslmode must be disable, allow, prefer, require, verify-ca or verify-full, not '\(mode)'")
        }
        return .init(host: host, port: c.port ?? 5432, username: user, password: password, database: db, tls: tls)
    }
}
