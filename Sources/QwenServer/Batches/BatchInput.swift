import Foundation
import QwenChat
import QwenFormats

/// A batch's input file checked line by line before anything runs: JSONL of
/// `{"custom_id", "method": "POST", "url", "body"}`, one endpoint per batch, `custom_id`s
/// unique, and every body a valid request for its endpoint (the same parsers the endpoints
/// use, the model a served one). Problems are reported with their line numbers.
struct BatchInput {
    static let maxLines = 50_000
    /// Problems listed at most (the count says how many there were).
    static let maxListed = 100

    struct Checked {
        var lines: [BatchLine] = []
        var errors: [Batch.LineError] = []
        var problemCount = 0
    }

    /// `endpoint` nil: any of the batch endpoints, the same on every line (an upload's check).
    static func check(bytes: [UInt8], endpoint: String?, service: ModelService?) -> Checked {
        var out = Checked()
        var seen = Set<String>()
        var fileEndpoint = endpoint
        func problem(_ line: Int, _ code: String, _ message: String, param: String? = nil) {
            out.problemCount += 1
            if out.errors.count < maxListed { out.errors.append(.init(code: code, message: message, param: param, line: line)) }
        }
        var lineNo = 0, start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            lineNo += 1
            defer { start = end + 1 }
            var raw = bytes[start..<end]
            if raw.last == 0x0D { raw = raw.dropLast() }
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
            guard out.lines.count < maxLines else {
                problem(lineNo, "too_many_requests", "a batch holds at most \(maxLines) requests")
                break
            }
            guard let v = try? JSONValue.parse(Array(raw)), v.object != nil else {
                problem(lineNo, "invalid_json", "line \(lineNo) is not a JSON object")
                continue
            }
            guard let id = v["custom_id"]?.string, !id.isEmpty, id.count <= 512 else {
                problem(lineNo, "missing_required_parameter", "line \(lineNo): 'custom_id' must be a non-empty string of at most 512 characters", param: "custom_id")
                continue
            }
            guard seen.insert(id).inserted else {
                problem(lineNo, "duplicate_custom_id", "line \(lineNo): the custom_id '\(id.prefix(64))' appears on an earlier line", param: "custom_id")
                continue
            }
            guard v["method"]?.string == "POST" else {
                problem(lineNo, "invalid_method", "line \(lineNo): 'method' must be POST", param: "method")
                continue
            }
            guard let url = v["url"]?.string, Batch.endpoints.contains(url) else {
                problem(lineNo, "invalid_url", "line \(lineNo): 'url' must be one of \(Batch.endpoints.joined(separator: ", "))", param: "url")
                continue
            }
            if let e = fileEndpoint, url != e {
                problem(lineNo, "mismatched_url", "line \(lineNo): 'url' is \(url) but the batch's endpoint is \(e) (one endpoint per batch)", param: "url")
                continue
            }
            fileEndpoint = url
            guard let body = v["body"], body.object != nil else {
                problem(lineNo, "invalid_body", "line \(lineNo): 'body' must be a JSON object", param: "body")
                continue
            }
            if body["stream"]?.bool == true {
                problem(lineNo, "invalid_body", "line \(lineNo): 'stream' is not allowed in a batch", param: "body.stream")
                continue
            }
            if url == "/v1/responses", body["background"]?.bool == true {
                problem(lineNo, "invalid_body", "line \(lineNo): 'background' is not allowed in a batch", param: "body.background")
                continue
            }
            if let service {
                do { try validate(body, url: url, service: service) } catch let e as APIError {
                    problem(lineNo, e.code ?? "invalid_body", "line \(lineNo): \(e.message)", param: e.param.map { "body.\($0)" })
                    continue
                } catch {
                    problem(lineNo, "invalid_body", "line \(lineNo): \(error)")
                    continue
                }
            }
            out.lines.append(BatchLine(line: lineNo, customID: id, body: body))
        }
        if out.lines.isEmpty && out.problemCount == 0 { problem(0, "empty_file", "the file holds no requests") }
        return out
    }

    /// The endpoint's own parsing of a body, short of rendering its prompt.
    static func validate(_ body: JSONValue, url: String, service: ModelService) throws {
        let f = try RequestFields(body)
        _ = try service.resolveModel(f)
        switch url {
        case "/v1/responses":
            let r = try ResponseRequest.parse(f)
            _ = try GenerationOptions.parse(try RequestFields(r.chatBody(history: [])), chat: true, vocabSize: service.tokenizer.vocabularySize)
        case "/v1/completions":
            _ = try GenerationOptions.parse(f, chat: false, vocabSize: service.tokenizer.vocabularySize)
            guard f.has("prompt") else { throw APIError.badParam("prompt", "'prompt' is required") }
        default:
            _ = try GenerationOptions.parse(f, chat: true, vocabSize: service.tokenizer.vocabularySize)
            guard let m = f.body["messages"]?.array, !m.isEmpty else { throw APIError.badParam("messages", "'messages' must be a non-empty list") }
        }
    }
}
