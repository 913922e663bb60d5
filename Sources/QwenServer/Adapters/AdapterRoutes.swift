import Foundation
import Hummingbird
import QwenChat
import QwenFormats
import QwenModel

/// The adapter endpoints: ours (`GET/POST /v1/adapters`, `DELETE /v1/adapters/{name}`)
/// and vLLM's (`POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`).
extension ModelService {
    func adapterJSON(_ e: AdapterRegistry.Entry) -> JSONValue {
        .object([("id", .string(e.name)), ("object", .string("adapter")), ("created", .int(e.created)),
                 ("parent", .string(name)), ("path", .string(e.adapter.path)), ("format", .string(e.adapter.format)),
                 ("rank", .int(e.adapter.maxRank)), ("target_modules", .array(e.adapter.targetModules.map { .string($0) })),
                 ("origin", .string(e.origin))])
    }

    /// An adapter as a model of /v1/models (vLLM lists them the same way, with its
    /// directory as `root`; callers who may not see server paths get its name there).
    func listAdapters() -> Response {
        Self.jsonResponse(.object([("object", .string("list")), ("data", .array(adapters.all.map(adapterJSON)))]))
    }

    /// Loads (or reloads) an adapter; the body names it and its directory.
    func loadAdapter(_ body: JSONValue, vllm: Bool) async throws -> Response {
        let f = try RequestFields(body)
        let (nameKey, pathKey) = vllm ? ("lora_name", "lora_path") : ("name", "path")
        guard let n = try f.string(nameKey) else { throw APIError.badParam(nameKey, "'\(nameKey)' is required") }
        guard let p = try f.string(pathKey), !p.isEmpty else { throw APIError.badParam(pathKey, "'\(pathKey)' is required") }
        let entry: AdapterRegistry.Entry
        do {
            entry = try await adapters.load(name: n, path: p)
        } catch let e as ModelFileError {
            throw APIError(.badRequest, "cannot load adapter '\(n)': \(e)", param: pathKey, code: "invalid_adapter")
        } catch let e as AdapterRegistry.RegistryError {
            throw APIError(.badRequest, e.description, param: nameKey, code: "invalid_value")
        } catch let e as BackgroundWork.StoppingError {
            throw APIError(.serviceUnavailable, e.description, type: "server_error", code: "shutting_down")
        }
        if vllm { return Self.textResponse("Success: LoRA adapter '\(n)' added successfully.") }
        return Self.jsonResponse(adapterJSON(entry))
    }

    /// Unloads an adapter: 404 at once for new requests, answered when its sequences end.
    func unloadAdapter(name n: String, vllm: Bool) async throws -> Response {
        guard let drained = await adapters.unload(name: n) else {
            throw APIError(.notFound, "no adapter named '\(n)' is loaded", param: vllm ? "lora_name" : "name", code: "adapter_not_found")
        }
        if vllm { return Self.textResponse("Success: LoRA adapter '\(n)' removed successfully.") }
        return Self.jsonResponse(.object([("id", .string(n)), ("object", .string("adapter")), ("deleted", .bool(true)),
                                          ("drained", .bool(drained))]))
    }

    static func textResponse(_ s: String) -> Response {
        Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: s)))
    }
}
