import Foundation
import Hummingbird
import MultipartKit
import NIOCore
import QwenChat
import QwenFormats
import QwenTokenizer
import QwenTraining

/// OpenAI's Files API: uploads stream to disk (never whole in memory) up to a size limit, a
/// `fine-tune` file is checked line by line before it is `processed`, and ids are checked
/// before they become paths.
struct FilesController {
    let store: any FineTuningStore
    /// Where uploads are streamed before the store takes them (`<state-dir>/uploads`).
    let uploadsDirectory: String
    let tokenizer: Tokenizer
    let maxUploadBytes: Int

    static let purposes: Set<String> = ["fine-tune", "batch", "assistants", "user_data", "evals", "vision"]

    func addRoutes(to group: RouterGroup<QwenRequestContext>) {
        group.post("files") { req, _ -> Response in try await upload(req) }
        group.get("files") { req, _ -> Response in try await list(req) }
        group.get("files/:id") { _, ctx -> Response in try Self.json(try await file(ctx)) }
        group.get("files/:id/content") { _, ctx -> Response in try await content(ctx) }
        group.delete("files/:id") { _, ctx -> Response in
            let f = try await file(ctx)
            _ = try await store.deleteFile(f.id)
            return ModelService.jsonResponse(.object([("id", .string(f.id)), ("object", .string("file")), ("deleted", .bool(true))]))
        }
    }

    static func json<T: Encodable>(_ v: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(data: try enc.encode(v))))
    }

    /// An id as it may appear in a path: its prefix and 24 lower-case letters or digits.
    static func validID(_ id: String, prefix: String) -> Bool {
        id.hasPrefix(prefix) && id.count == prefix.count + 24
            && id.dropFirst(prefix.count).unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    }

    func file(_ ctx: QwenRequestContext) async throws -> FileObject {
        let id = ctx.pathParameter("id")
        guard Self.validID(id, prefix: "file-"), let f = try await store.file(id) else {
            throw APIError(.notFound, "No such File object: \(id.prefix(64))", param: "id", code: "file_not_found")
        }
        return f
    }

    func content(_ ctx: QwenRequestContext) async throws -> Response {
        let f = try await file(ctx)
        // Streamed a MiB at a time: a large file never sits whole in memory, however many download it.
        let (fd, size) = try SafeFile.openRegular(try await store.fileContent(f.id))
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        let body = ResponseBody(contentLength: size) { writer in
            defer { try? handle.close() }
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
                try await writer.write(ByteBuffer(data: chunk))
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: f.filename.hasSuffix(".csv") ? "text/csv" : "application/octet-stream"],
                        body: body)
    }

    struct Page<T: Encodable>: Encodable {
        var object = "list"
        var data: [T]
        var has_more: Bool
        var first_id: String?
        var last_id: String?
    }

    static func limit(_ req: Request, default d: Int, max m: Int) throws -> Int {
        guard let s = req.uri.queryParameters.get("limit") else { return d }
        guard let n = Int(s), n >= 1, n <= m else { throw APIError.badParam("limit", "limit must be a whole number from 1 to \(m)") }
        return n
    }

    func list(_ req: Request) async throws -> Response {
        let q = req.uri.queryParameters
        let order = q.get("order") ?? "desc"
        guard order == "asc" || order == "desc" else { throw APIError.badParam("order", "order must be asc or desc") }
        let limit = try Self.limit(req, default: 10000, max: 10000)
        let purpose = q.get("purpose")
        let after = q.get("after")
        let (items, more) = try await store.files(purpose: purpose, after: after, limit: limit, ascending: order == "asc")
        return try Self.json(Page(data: items, has_more: more, first_id: items.first?.id, last_id: items.last?.id))
    }

    /// Streams a multipart/form-data body (`file`, `purpose`) to a file under the state
    /// directory, then checks it.
    func upload(_ req: Request) async throws -> Response {
        let type = req.headers[.contentType] ?? ""
        guard type.lowercased().hasPrefix("multipart/form-data"),
              let b = type.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) }).first(where: { $0.lowercased().hasPrefix("boundary=") }) else {
            throw APIError(.badRequest, "upload the file as multipart/form-data with fields 'file' and 'purpose'", param: "file")
        }
        var boundary = String(b.dropFirst("boundary=".count))
        if boundary.hasPrefix("\""), boundary.hasSuffix("\""), boundary.count >= 2 { boundary = String(boundary.dropFirst().dropLast()) }
        guard !boundary.isEmpty, boundary.utf8.count <= 200 else { throw APIError.badParam("file", "the multipart boundary is missing or too long") }
        let id = IDs.make("file-")
        let partPath = uploadsDirectory + "/\(id).part"
        guard FileManager.default.createFile(atPath: partPath, contents: nil), let out = FileHandle(forWritingAtPath: partPath) else {
            throw APIError(.internalServerError, "cannot store the upload")
        }
        var removePart = true
        defer {
            try? out.close()
            if removePart { try? FileManager.default.removeItem(atPath: partPath) }
        }
        let parser = MultipartParser(boundary: boundary)
        var field = "", filename: String?, purpose = Data(), fileBytes = 0, sawFile = false
        var writeError: Error?
        let limit = maxUploadBytes
        var tooLarge = false
        parser.onHeader = { name, value in
            guard name.lowercased() == "content-disposition" else { return }
            for part in value.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                if part.hasPrefix("name=") { field = String(part.dropFirst(5)).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
                if part.hasPrefix("filename=") { filename = String(part.dropFirst(9)).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
            }
        }
        parser.onBody = { buf in
            if field == "file" {
                sawFile = true
                fileBytes += buf.readableBytes
                if fileBytes > limit { tooLarge = true; return }
                do { try out.write(contentsOf: buf.readableBytesView) } catch { writeError = error }
            } else if field == "purpose", purpose.count + buf.readableBytes <= 64 {
                purpose.append(contentsOf: buf.readableBytesView)
            }
        }
        parser.onPartComplete = { field = "" }
        do {
            for try await chunk in req.body {
                try parser.execute(chunk)
                if tooLarge { break }
                if let writeError { throw writeError }
            }
        } catch let e as APIError { throw e } catch is MultipartError {
            throw APIError(.badRequest, "the multipart body is malformed", param: "file")
        } catch {
            throw APIError(.badRequest, "the upload could not be read or stored: \(error)", param: "file", code: "upload_failed")
        }
        if tooLarge {
            throw APIError(.contentTooLarge, "the file is larger than the \(limit) bytes this server accepts (--max-upload-bytes)", param: "file",
                           code: "file_too_large")
        }
        guard sawFile else { throw APIError.badParam("file", "the 'file' field is required") }
        let p = String(decoding: purpose, as: UTF8.self)
        guard Self.purposes.contains(p) else {
            throw APIError.badParam("purpose", "'purpose' must be one of \(Self.purposes.sorted().joined(separator: ", "))")
        }
        try out.synchronize()
        var obj = FileObject(id: id, bytes: fileBytes, created_at: Int(Date().timeIntervalSince1970),
                             filename: String((filename ?? "upload.jsonl").prefix(255)), purpose: p, status: "uploaded")
        if p == "fine-tune" {
            let tokenizer = self.tokenizer
            let check = try await Offload.run { TrainingData.check(file: partPath, tokenizer: tokenizer, format: JobRunner.trainFormat) }
            if check.problems.isEmpty {
                obj.status = "processed"
                obj.lines = check.examples
                obj.max_tokens = check.maxTokens
            } else {
                obj.status = "error"
                obj.status_details = check.problems.joined(separator: "; ")
            }
        } else if p == "batch" {
            // The lines' shape now (errors with line numbers); their bodies when a batch is created.
            let limit = maxUploadBytes
            let check = try await Offload.run { BatchInput.check(bytes: [UInt8](try SafeFile.read(partPath, maxBytes: limit)), endpoint: nil, service: nil) }
            obj.lines = check.lines.count
            if check.problemCount == 0 {
                obj.status = "processed"
            } else {
                obj.status = "error"
                obj.status_details = check.errors.prefix(20).map(\.message).joined(separator: "; ")
                    + (check.problemCount > 20 ? "; and \(check.problemCount - 20) more" : "")
            }
        } else {
            obj.status = "processed"
        }
        try? out.close()
        try await store.insertFile(obj, content: partPath)
        removePart = false
        return try Self.json(obj)
    }
}
