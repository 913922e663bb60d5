import Foundation
import QwenChat

/// OpenAI's Batch object (`object: "batch"`).
struct Batch: Codable, Equatable {
    struct LineError: Codable, Equatable {
        var code: String
        var message: String
        var param: String?
        var line: Int?
    }
    struct Errors: Codable, Equatable {
        var object = "list"
        var data: [LineError]
    }
    struct RequestCounts: Codable, Equatable {
        var total = 0
        var completed = 0
        var failed = 0
    }

    var id: String
    var object = "batch"
    var endpoint: String
    var errors: Errors?
    var input_file_id: String
    var completion_window: String
    var status: String
    var output_file_id: String?
    var error_file_id: String?
    var created_at: Int
    var in_progress_at: Int?
    var expires_at: Int
    var finalizing_at: Int?
    var completed_at: Int?
    var failed_at: Int?
    var expired_at: Int?
    var cancelling_at: Int?
    var cancelled_at: Int?
    var request_counts = RequestCounts()
    var metadata: JSONValue?

    static let endpoints = ["/v1/chat/completions", "/v1/completions", "/v1/responses"]
    /// States a runner still has work in.
    static let active = ["validating", "in_progress", "finalizing", "cancelling"]
    var isFinal: Bool { !Self.active.contains(status) }
}

/// One line of a batch's input: its number (from 1), `custom_id` and request body.
struct BatchLine: Equatable {
    var line: Int
    var customID: String
    var body: JSONValue
}

/// A line of a batch's output or error file.
struct BatchOutputLine: Encodable {
    struct Answer: Encodable {
        var status_code: Int
        var request_id: String
        var body: JSONValue
    }
    struct Failure: Encodable {
        var code: String
        var message: String
    }
    var id: String
    var custom_id: String
    /// Both always present, one of them null (OpenAI's output line shape).
    var response: Nullable<Answer>
    var error: Nullable<Failure>
}
