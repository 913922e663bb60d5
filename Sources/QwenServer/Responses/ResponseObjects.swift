import Foundation
import QwenChat

/// OpenAI's Responses API objects, as Codable types: what `POST /v1/responses` returns, what
/// the store keeps, and the items a conversation is made of.

/// `usage` of a response.
struct ResponseUsage: Codable, Equatable {
    struct InputDetails: Codable, Equatable { var cached_tokens: Int }
    struct OutputDetails: Codable, Equatable { var reasoning_tokens: Int }
    var input_tokens: Int
    var input_tokens_details: InputDetails
    var output_tokens: Int
    var output_tokens_details: OutputDetails
    var total_tokens: Int

    init(_ u: Usage, reasoningTokens: Int) {
        input_tokens = u.promptTokens
        input_tokens_details = .init(cached_tokens: u.cachedTokens)
        output_tokens = u.completionTokens
        output_tokens_details = .init(reasoning_tokens: reasoningTokens)
        total_tokens = u.promptTokens + u.completionTokens
    }
}

/// A text part of an output message (`output_text`), with its tokens' log-probabilities when asked for.
struct OutputText: Codable, Equatable {
    var type = "output_text"
    var text: String
    var annotations: [JSONValue] = []
    var logprobs: [JSONValue]?
}

/// One item of a response's output: a message, a reasoning block, or a function call.
enum OutputItem: Codable, Equatable {
    struct Message: Codable, Equatable {
        var type = "message"
        var id: String
        var status: String
        var role = "assistant"
        var content: [OutputText]
    }
    struct Reasoning: Codable, Equatable {
        struct Text: Codable, Equatable {
            var type = "reasoning_text"
            var text: String
        }
        var type = "reasoning"
        var id: String
        var status: String
        var summary: [JSONValue] = []
        var content: [Text]
    }
    struct FunctionCall: Codable, Equatable {
        var type = "function_call"
        var id: String
        var call_id: String
        var name: String
        var arguments: String
        var status: String
    }

    case message(Message)
    case reasoning(Reasoning)
    case functionCall(FunctionCall)

    var id: String {
        switch self {
        case .message(let m): return m.id
        case .reasoning(let r): return r.id
        case .functionCall(let f): return f.id
        }
    }

    enum TypeKey: String, CodingKey { case type }

    init(from decoder: Decoder) throws {
        let type = try decoder.container(keyedBy: TypeKey.self).decode(String.self, forKey: .type)
        switch type {
        case "message": self = .message(try Message(from: decoder))
        case "reasoning": self = .reasoning(try Reasoning(from: decoder))
        case "function_call": self = .functionCall(try FunctionCall(from: decoder))
        default: throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown output item type \(type)"))
        }
    }

    func encode(to encoder: Encoder) throws {
        switch self {
        case .message(let m): try m.encode(to: encoder)
        case .reasoning(let r): try r.encode(to: encoder)
        case .functionCall(let f): try f.encode(to: encoder)
        }
    }

    /// The item as JSON (for the conversation a later response continues).
    var json: JSONValue { (try? JSONValue.parse(Array(ResponseJSON.encode(self).utf8))) ?? .null }
}

/// A response (`object: "response"`).
struct ResponseObject: Codable, Equatable {
    struct ErrorInfo: Codable, Equatable {
        var code: String
        var message: String
    }
    struct IncompleteDetails: Codable, Equatable { var reason: String }
    struct Reasoning: Codable, Equatable {
        var effort: String?
        var summary: String?
        enum CodingKeys: String, CodingKey { case effort, summary }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(effort, forKey: .effort)
            try c.encode(summary, forKey: .summary)
        }
    }
    struct TextConfig: Codable, Equatable { var format: JSONValue }

    var id: String
    var object = "response"
    var created_at: Int
    var status: String
    var background: Bool
    var error: ErrorInfo?
    var incomplete_details: IncompleteDetails?
    var instructions: String?
    var max_output_tokens: Int?
    var metadata: JSONValue
    var model: String
    var output: [OutputItem]
    var parallel_tool_calls: Bool
    var previous_response_id: String?
    var reasoning: Reasoning
    var store: Bool
    var temperature: Double
    var text: TextConfig
    var tool_choice: JSONValue
    var tools: [JSONValue]
    var top_logprobs: Int?
    var top_p: Double
    var truncation: String
    var usage: ResponseUsage?
    var user: String?

    /// Every key is written, null ones too, as OpenAI's objects carry them.
    enum CodingKeys: String, CodingKey {
        case id, object, created_at, status, background, error, incomplete_details, instructions, max_output_tokens, metadata, model,
             output, parallel_tool_calls, previous_response_id, reasoning, store, temperature, text, tool_choice, tools, top_logprobs,
             top_p, truncation, usage, user
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created_at, forKey: .created_at)
        try c.encode(status, forKey: .status)
        try c.encode(background, forKey: .background)
        try c.encode(error, forKey: .error)
        try c.encode(incomplete_details, forKey: .incomplete_details)
        try c.encode(instructions, forKey: .instructions)
        try c.encode(max_output_tokens, forKey: .max_output_tokens)
        try c.encode(metadata, forKey: .metadata)
        try c.encode(model, forKey: .model)
        try c.encode(output, forKey: .output)
        try c.encode(parallel_tool_calls, forKey: .parallel_tool_calls)
        try c.encode(previous_response_id, forKey: .previous_response_id)
        try c.encode(reasoning, forKey: .reasoning)
        try c.encode(store, forKey: .store)
        try c.encode(temperature, forKey: .temperature)
        try c.encode(text, forKey: .text)
        try c.encode(tool_choice, forKey: .tool_choice)
        try c.encode(tools, forKey: .tools)
        try c.encode(top_logprobs, forKey: .top_logprobs)
        try c.encode(top_p, forKey: .top_p)
        try c.encode(truncation, forKey: .truncation)
        try c.encode(usage, forKey: .usage)
        try c.encode(user, forKey: .user)
    }

    var isFinal: Bool { !["queued", "in_progress"].contains(status) }
}

/// `{"id", "object": "response", "deleted": true}`.
struct DeletedResponse: Codable {
    var id: String
    var object = "response"
    var deleted = true
}
