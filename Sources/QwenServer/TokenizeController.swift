import Foundation
import Hummingbird
import NIOCore
import QwenChat

/// `POST /tokenize` and `POST /detokenize`, in vLLM's shape (`prompt` or `messages` in;
/// `count`, `max_model_len`, `tokens` out) and llama.cpp's (`content` in; `with_pieces`),
/// so a client counts a prompt's tokens exactly as generation will see them.
struct TokenizeController {
    let service: ModelService
    let limit: Int

    struct Tokenized: Encodable {
        var count: Int
        var max_model_len: Int
        var tokens: [Int32]
        var token_strs: [String]?
    }

    struct Detokenized: Encodable {
        /// vLLM's name and llama.cpp's for the same text.
        var prompt: String
        var content: String
    }

    func addRoutes(to group: RouterGroup<QwenRequestContext>) {
        group.post("tokenize") { req, _ -> Response in try await tokenize(try await HTTPServer.body(req, limit: limit)) }
        group.post("detokenize") { req, _ -> Response in try await detokenize(try await HTTPServer.body(req, limit: limit)) }
    }

    func json<T: Encodable>(_ v: T) -> Response { ModelService.typedResponse(v) }

    func tokenize(_ body: JSONValue) async throws -> Response {
        let f = try RequestFields(body)
        _ = try service.resolveModel(f)
        let pieces = try f.bool("return_token_strs") ?? f.bool("with_pieces") ?? false
        let service = self.service
        let tokens: [Int32]
        if f.has("messages") {
            guard !f.has("prompt") && !f.has("content") else {
                throw APIError.badParam("messages", "send 'messages' or 'prompt', not both")
            }
            // The chat prompt exactly as /v1/chat/completions renders it (tools and template arguments too).
            tokens = try await Offload.run {
                let p = try service.chatPrompt(f)
                return service.renderer.tokens(p.prompt)
            }
        } else {
            let key = f.has("prompt") ? "prompt" : "content"
            guard let text = try f.string(key) else {
                throw APIError.badParam("prompt", "'prompt' (a string) or 'messages' is required")
            }
            let tokenizer = service.tokenizer
            // As /v1/completions encodes a prompt (Qwen's tokenizers add no BOS).
            tokens = try await Offload.run { tokenizer.encode(text) }
        }
        let strs = pieces ? tokens.map { String(decoding: service.tokenizer.bytes([$0]), as: UTF8.self) } : nil
        return json(Tokenized(count: tokens.count, max_model_len: service.contextLimit, tokens: tokens, token_strs: strs))
    }

    func detokenize(_ body: JSONValue) async throws -> Response {
        let f = try RequestFields(body)
        _ = try service.resolveModel(f)
        guard let list = f.body["tokens"]?.array else { throw APIError.badParam("tokens", "'tokens' must be a list of token ids") }
        let vocab = service.tokenizer.vocabularySize
        var ids: [Int32] = []
        ids.reserveCapacity(list.count)
        for v in list {
            guard let i = v.int, i >= 0, i < vocab else {
                throw APIError.badParam("tokens", "'tokens' has a value that is not a token id of this model (0..<\(vocab))")
            }
            ids.append(Int32(i))
        }
        let tokenizer = service.tokenizer, tokens = ids
        let text = try await Offload.run { tokenizer.decode(tokens) }
        return json(Detokenized(prompt: text, content: text))
    }
}
