import Foundation
import QwenChat
import QwenKernels

/// A field OpenAI always writes: `null` when there is no value.
struct Nullable<T: Encodable>: Encodable {
    var value: T?
    init(_ value: T?) { self.value = value }
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        if let value { try c.encode(value) } else { try c.encodeNil() }
    }
}

/// `{"content": [token log-probabilities]}` of a chat choice.
struct ChatLogprobs: Encodable {
    var content: [JSONValue]
}

/// A tool call as the chat API writes it (`index` only in stream deltas).
struct ToolCallOut: Encodable {
    struct Function: Encodable {
        var name: String
        var arguments: String
    }
    var index: Int?
    var id: String
    var type = "function"
    var function: Function

    init(_ c: OutputParser.ToolCall, index: Int?) {
        self.index = index
        id = IDs.make("call_")
        function = Function(name: c.name, arguments: c.arguments)
    }
}

/// `chat.completion`.
struct ChatCompletion: Encodable {
    struct Message: Encodable {
        var role = "assistant"
        var content: Nullable<String>
        var reasoning_content: String?
        var tool_calls: [ToolCallOut]?
    }
    struct Choice: Encodable {
        var index: Int
        var message: Message
        var logprobs: Nullable<ChatLogprobs>
        var finish_reason: String
    }
    var id: String
    var object = "chat.completion"
    var created: Int
    var model: String
    var choices: [Choice]
    var usage: Usage
}

/// `chat.completion.chunk`.
struct ChatCompletionChunk: Encodable {
    struct Delta: Encodable {
        var role: String?
        var content: String?
        var reasoning_content: String?
        var tool_calls: [ToolCallOut]?
    }
    struct Choice: Encodable {
        var index: Int
        var delta: Delta
        var logprobs: Nullable<ChatLogprobs>
        var finish_reason: Nullable<String>
    }
    var id: String
    var object = "chat.completion.chunk"
    var created: Int
    var model: String
    var choices: [Choice]
    /// Present (null until the last chunk) when `stream_options.include_usage` asks for it.
    var usage: Nullable<Usage>?
}

/// `text_completion`, whole or as a stream chunk.
struct Completion: Encodable {
    struct Choice: Encodable {
        var index: Int
        var text: String
        var logprobs: JSONValue
        var finish_reason: Nullable<String>
    }
    var id: String
    var object = "text_completion"
    var created: Int
    var model: String
    var choices: [Choice]
    /// Whole responses always carry it; stream chunks when `include_usage` asks (null until the last).
    var usage: Nullable<Usage>?
}

/// A model (`object: "model"`): the base model (with its compute mode and kernels) or an adapter.
struct ModelObject: Encodable {
    var id: String
    var object = "model"
    var created: Int
    var owned_by = "qwen-serve"
    var root: String
    var parent: Nullable<String>
    var max_model_len: Int
    var compute: String?
    var cpu_level: String?
    var int8_kernel: String?
}

extension ModelService {
    var modelObject: ModelObject {
        ModelObject(id: name, created: created, root: name, parent: Nullable(nil), max_model_len: contextLimit, compute: compute,
                    cpu_level: CPUFeatures.level, int8_kernel: CPUFeatures.int8Kernel)
    }

    func adapterModelObject(_ e: AdapterRegistry.Entry, showPath: Bool) -> ModelObject {
        ModelObject(id: e.name, created: e.created, root: showPath ? e.adapter.path : e.name, parent: Nullable(name), max_model_len: contextLimit)
    }
}

/// A list page (`object: "list"`).
struct ListPage<Item: Encodable>: Encodable {
    var object = "list"
    var data: [Item]
    var first_id: String?
    var last_id: String?
    var has_more: Bool
}

/// Encoding shared by every typed response body.
enum ResponseJSON {
    static func encode<T: Encodable>(_ v: T) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.withoutEscapingSlashes]
        // Only infinities or NaN could fail, and no response carries them.
        return (try? String(decoding: enc.encode(v), as: UTF8.self)) ?? "{}"
    }
}
