import Hummingbird
import NIOCore
import QwenChat

/// The one Server-Sent Events writer of every streaming endpoint: typed events as `data:` lines
/// (with an `event:` line when the API names its events, as the Responses API does), keep-alive
/// comments, and the end (`data: [DONE]` where the API has it).
struct SSEWriter {
    var writer: any ResponseBodyWriter

    init(_ writer: any ResponseBodyWriter) { self.writer = writer }

    mutating func send<T: Encodable>(_ event: T, name: String? = nil) async throws {
        let head = name.map { "event: \($0)\n" } ?? ""
        try await writer.write(ByteBuffer(string: head + "data: " + ResponseJSON.encode(event) + "\n\n"))
    }

    mutating func keepAlive() async throws { try await writer.write(ByteBuffer(string: ": keep-alive\n\n")) }

    /// `data: [DONE]`, then the end of the body.
    mutating func done() async throws {
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
    }

    /// The end of the body, with no `[DONE]` (the Responses API's streams end with their last event).
    mutating func finish() async throws { try await writer.finish(nil) }
}
