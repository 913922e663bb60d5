import Foundation
import Hummingbird
import NIOCore
import QwenChat

/// OpenAI's Batch API: create from an uploaded `batch` file, retrieve, list, cancel. The work
/// runs in the BatchRunner on the serving engine; output and error files are served by the
/// Files API (`GET /v1/files/{id}/content`).
struct BatchesController {
    let runner: BatchRunner
    let limit: Int

    func addRoutes(to group: RouterGroup<QwenRequestContext>) {
        group.post("batches") { req, _ -> Response in json(try await create(try await HTTPServer.body(req, limit: limit))) }
        group.get("batches") { req, _ -> Response in
            let (items, more) = try await runner.store.list(after: req.uri.queryParameters.get("after"),
                                                      limit: try FilesController.limit(req, default: 20, max: 100))
            return json(ListPage(data: items, first_id: items.first?.id, last_id: items.last?.id, has_more: more))
        }
        group.get("batches/:id") { _, ctx -> Response in json(try await batch(ctx)) }
        group.post("batches/:id/cancel") { _, ctx -> Response in
            let b = try await batch(ctx)
            guard !b.isFinal else {
                throw APIError(.conflict, "the batch is already \(b.status)", param: "batch_id", code: "invalid_state")
            }
            return json(try await runner.cancel(b.id) ?? b)
        }
    }

    func json<T: Encodable>(_ v: T) -> Response { ModelService.typedResponse(v) }

    func batch(_ ctx: QwenRequestContext) async throws -> Batch {
        let id = ctx.pathParameter("id")
        guard FilesController.validID(id, prefix: "batch_"), let b = try await runner.store.get(id) else {
            throw APIError(.notFound, "No batch found with id '\(id.prefix(64))'", param: "batch_id", code: "batch_not_found")
        }
        return b
    }

    func create(_ body: JSONValue) async throws -> Batch {
        let f = try RequestFields(body)
        guard let fileID = try f.string("input_file_id") else { throw APIError.badParam("input_file_id", "'input_file_id' is required") }
        guard let endpoint = try f.string("endpoint") else { throw APIError.badParam("endpoint", "'endpoint' is required") }
        guard Batch.endpoints.contains(endpoint) else {
            throw APIError.badParam("endpoint", "'endpoint' must be one of \(Batch.endpoints.joined(separator: ", "))")
        }
        guard try f.string("completion_window") == "24h" else { throw APIError.badParam("completion_window", "'completion_window' must be \"24h\"") }
        var metadata: JSONValue?
        if let m = f.body["metadata"], !m.isNull { metadata = try ResponseRequest.metadata(m) }
        guard FilesController.validID(fileID, prefix: "file-"), let file = try await runner.files.file(fileID) else {
            throw APIError(.notFound, "No such File object: \(fileID.prefix(64))", param: "input_file_id", code: "file_not_found")
        }
        guard file.purpose == "batch" else {
            throw APIError.badParam("input_file_id", "the file's purpose is '\(file.purpose)'; a batch's input is uploaded with purpose 'batch'")
        }
        let now = BatchRunner.now
        let b = Batch(id: IDs.make("batch_"), endpoint: endpoint, errors: nil, input_file_id: fileID, completion_window: "24h",
                      status: "validating", created_at: now, expires_at: now + 86400, metadata: metadata)
        try await runner.store.insert(b)
        runner.kick()
        return b
    }
}
