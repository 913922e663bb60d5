import HTTPTypes
import QwenChat

/// An error as OpenAI returns it: `{"error": {"message", "type", "param", "code"}}`.
public struct APIError: Error, CustomStringConvertible {
    public let status: HTTPResponse.Status
    public let message: String
    public let type: String
    public let param: String?
    public let code: String?
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, _ message: String, type: String? = nil, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type ?? (status.code >= 500 ? "server_error" : "invalid_request_error")
        self.param = param
        self.code = code
    }

    public var description: String { "\(status.code): \(message)" }

    public var json: JSONValue {
        .object([("error", .object([
            ("message", .string(message)), ("type", .string(type)),
            ("param", param.map { .string($0) } ?? .null), ("code", code.map { .string($0) } ?? .null),
        ]))])
    }

    static func badParam(_ param: String, _ message: String) -> APIError {
        APIError(.badRequest, message, param: param, code: "invalid_value")
    }
}
