import Foundation
import Hummingbird
import Logging
import NIOCore
import QwenChat
import QwenEngine
import QwenGrammar

/// OpenAI's Responses API: `POST /v1/responses` on the chat engine (same prompt renderer,
/// sampling and output constraints), streamed as Responses events, stored per API key with
/// `previous_response_id` continuing a stored conversation; background responses run
/// detached and can be cancelled.
struct ResponsesController {
    let service: ModelService
    /// nil: this server keeps no responses (no usable state directory).
    let store: ResponseStore?
    let runs: BackgroundResponses
    let limit: Int
    /// Responses older than this many seconds are deleted.
    let retention: Int

    func addRoutes(to group: RouterGroup<QwenRequestContext>) {
        group.post("responses") { req, ctx -> Response in
            try await create(try await HTTPServer.body(req, limit: limit), ctx)
        }
        group.get("responses/:id") { _, ctx -> Response in json(try await stored(ctx).response) }
        group.get("responses/:id/input_items") { req, ctx -> Response in try await inputItems(req, ctx) }
        group.delete("responses/:id") { _, ctx -> Response in
            let s = try await stored(ctx)
            if !s.response.isFinal { _ = await cancel(s) }
            _ = try await store?.delete(s.response.id, owner: ctx.caller.owner)
            return json(DeletedResponse(id: s.response.id))
        }
        group.post("responses/:id/cancel") { _, ctx -> Response in
            let s = try await stored(ctx)
            guard s.response.background else {
                throw APIError(.badRequest, "Only background responses can be cancelled", param: "response_id", code: "invalid_state")
            }
            return json(await cancel(s))
        }
    }

    func json<T: Encodable>(_ v: T) -> Response { ModelService.typedResponse(v) }

    /// Stored JSON read for one conversation at most: far more than a context's worth of text,
    /// and a bound on what one request can make the server read and render.
    static let maxHistoryBytes = 16 << 20

    static let unavailable = APIError(.serviceUnavailable, "stored responses are off on this server (no usable --state-dir; see its log)",
                                      type: "server_error", code: "response_storage_unavailable")

    func stored(_ ctx: QwenRequestContext) async throws -> StoredResponse {
        guard let store else { throw Self.unavailable }
        let id = ctx.pathParameter("id")
        // Past the retention is gone, whether or not a purge has run since.
        guard FilesController.validID(id, prefix: "resp_"), let s = try await store.get(id, owner: ctx.caller.owner),
              s.response.created_at >= Int(Date().timeIntervalSince1970) - retention else {
            throw APIError(.notFound, "No response found with id '\(id.prefix(64))'", param: "response_id", code: "response_not_found")
        }
        return s
    }

    func inputItems(_ req: Request, _ ctx: QwenRequestContext) async throws -> Response {
        let s = try await stored(ctx)
        let q = req.uri.queryParameters
        let n = try FilesController.limit(req, default: 20, max: 100)
        let order = q.get("order") ?? "desc"
        guard ["asc", "desc"].contains(order) else { throw APIError.badParam("order", "order must be asc or desc") }
        var items = order == "asc" ? s.input : s.input.reversed()
        if let after = q.get("after") {
            guard let i = items.firstIndex(where: { $0["id"]?.string == after }) else {
                throw APIError.badParam("after", "'after' is not an item of this response")
            }
            items = Array(items[(i + 1)...])
        }
        let page = Array(items.prefix(n))
        return json(ListPage(data: page, first_id: page.first?["id"]?.string, last_id: page.last?["id"]?.string, has_more: items.count > n))
    }

    /// Cancels a background response; returns it as stored once its runner has ended. One
    /// running on another replica is asked through the store; if that replica does not end it
    /// within a few seconds (it stopped), it ends here.
    func cancel(_ s: StoredResponse) async -> ResponseObject {
        guard let store else { return s.response }
        let id = s.response.id
        var waitForRunner = runs.cancel(id)
        if !waitForRunner && !s.response.isFinal {
            waitForRunner = (try? await store.requestCancel(id)) ?? false
        }
        if waitForRunner {
            for _ in 0..<100 {
                if let now = try? await store.get(id, owner: s.owner), now.response.isFinal { return now.response }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
        }
        // Nobody runs it (its server stopped), or its replica did not answer: it ends now.
        if let now = try? await store.get(id, owner: s.owner), !now.response.isFinal {
            var r = now.response
            r.status = "cancelled"
            try? await store.update(r)
        }
        return (try? await store.get(id, owner: s.owner))?.response ?? s.response
    }

    // MARK: Create

    /// Chat-completions error parameters under the Responses API's names.
    static func renamed(_ e: APIError) -> APIError {
        let names = ["max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens", "response_format": "text",
                     "messages": "input"]
        guard let p = e.param, let n = names[p] else { return e }
        let message = e.message.replacingOccurrences(of: "'\(p)'", with: "'\(n)'")
        var r = APIError(e.status, message, type: e.type, param: n, code: e.code)
        r.headers = e.headers
        return r
    }

    func create(_ body: JSONValue, _ ctx: some Invocation) async throws -> Response {
        do { return try await createChecked(body, ctx) } catch let e as APIError { throw Self.renamed(e) }
    }

    func createChecked(_ body: JSONValue, _ ctx: some Invocation) async throws -> Response {
        let started = Date()
        let f = try RequestFields(body)
        let r = try ResponseRequest.parse(f)
        let target = try service.resolveModel(f)
        let owner = ctx.caller.owner
        if r.background && store == nil { throw Self.unavailable }
        var history: [JSONValue] = []
        if let prev = r.previousResponseID {
            guard let store else { throw Self.unavailable }
            let found: (turns: [StoredResponse], complete: Bool)?
            do {
                found = FilesController.validID(prev, prefix: "resp_") ? try await store.conversation(prev, owner: owner, maxBytes: Self.maxHistoryBytes) : nil
            } catch let b as BrokenChain {
                throw APIError.badParam("previous_response_id", "the conversation can no longer be continued: its response '\(b.missing.prefix(64))' was deleted or has expired")
            }
            guard let found, let last = found.turns.last, last.response.created_at >= Int(Date().timeIntervalSince1970) - retention else {
                throw APIError(.notFound, "Previous response with id '\(prev.prefix(64))' not found.", param: "previous_response_id", code: "previous_response_not_found")
            }
            // A conversation longer than any prompt could hold: with truncation its oldest turns go anyway.
            guard found.complete || r.truncation == "auto" else {
                throw APIError(.badRequest, "the conversation is longer than this model's context can hold; continue it with 'truncation': 'auto'",
                               param: "previous_response_id", code: "context_length_exceeded")
            }
            let chain = found.turns
            guard last.response.isFinal else {
                throw APIError.badParam("previous_response_id", "the previous response is still \(last.response.status); continue it once it has finished")
            }
            history = chain.flatMap { $0.input + $0.response.output.map(\.json) }
        }
        guard !(history + r.input).isEmpty else { throw APIError.badParam("input", "'input' is required") }
        let prepared = try await prepare(r, history: history)
        let o = prepared.options
        var request = try service.engineRequest(prompt: prepared.prompt, o, adapter: target.adapter, caller: ctx.caller)
        request.n = 1
        request.constraint = prepared.constraint?.0
        request.reasoningGate = prepared.constraint?.1
        let stream = try service.submit(request)
        let id = IDs.make("resp_")
        let storing = r.store && store != nil
        let state = ChoiceState(tokenizer: service.tokenizer, stops: o.stops, reasoning: service.thinkingModel, tools: prepared.tools != nil,
                                toolNames: prepared.tools ?? [], startInReasoning: service.thinkingModel && prepared.text.hasSuffix("<think>\n"))
        let record = service.requests.record(id: id, endpoint: "/v1/responses", model: target.name, promptTokens: prepared.prompt.count,
                                             prompt: prepared.text, started: started)
        let run = ResponseRun(builder: ResponseBuilder(response: r.response(id: id, model: target.name, status: "queued", store: storing),
                                                       includeLogprobs: r.includeLogprobs),
                              state: state, promptTokens: prepared.prompt.count)
        let input = r.input
        let store = self.store, requests = service.requests, runs = self.runs, retention = self.retention

        @Sendable func keep(_ final: ResponseObject) async {
            guard storing, let store else { return }
            do {
                try await store.insert(StoredResponse(response: final, input: input, owner: owner))
                _ = try await store.purge(createdBefore: Int(Date().timeIntervalSince1970) - retention)
            } catch {
                Logger(label: "qwen-serve.responses").error("response \(id) could not be stored: \(error)")
            }
        }

        if r.background, let store {
            let queued = run.builder.response
            try await store.insert(StoredResponse(response: queued, input: input, owner: owner))
            runs.register(id, stream)
            let background = service.adapters.background
            Task.detached {
                var final: (response: ResponseObject, firstToken: Date?, tokens: Int)
                do {
                    final = try await background.run("response \(id)") {
                        var run = run
                        _ = run.builder.start()
                        try? await store.update(run.builder.response)
                        let r = try await run.drive(stream, cancelled: { runs.isCancelled(id) }) { _ in }
                        return (r, run.firstToken, run.state.tokens)
                    }
                } catch {
                    // Shutdown began before it could start.
                    stream.cancel()
                    var run = run
                    _ = run.builder.fail(status: "failed", code: "server_shutdown", message: "the server shut down before this response ran", usage: nil)
                    final = (run.builder.response, nil, 0)
                }
                try? await store.update(final.response)
                runs.remove(id)
                requests.finished(record, firstToken: final.firstToken, completionTokens: final.tokens, cancelled: final.response.status == "cancelled")
            }
            return json(queued)
        }

        let gone = ctx.cancelWhenClientGoes(stream)
        if !r.stream {
            var run = run
            _ = run.builder.start()
            _ = try await run.drive(stream, cancelled: { gone.isSet }) { _ in }
            requests.finished(record, firstToken: run.firstToken, completionTokens: run.state.tokens, cancelled: gone.isSet)
            if run.builder.response.status == "failed", let e = run.builder.response.error {
                throw APIError(.internalServerError, e.message)
            }
            await keep(run.builder.response)
            return json(run.builder.response)
        }
        return Response(status: .ok, headers: ModelService.sseHeaders, body: ResponseBody { writer in
            var sse = SSEWriter(writer)
            var run = run
            do {
                for e in run.builder.start() { try await sse.send(e, name: e.type) }
                _ = try await run.drive(stream, cancelled: { gone.isSet }) { events in
                    if events.isEmpty { try await sse.keepAlive() }
                    for e in events { try await sse.send(e, name: e.type) }
                }
                try await sse.finish()
                requests.finished(record, firstToken: run.firstToken, completionTokens: run.state.tokens, cancelled: gone.isSet)
                await keep(run.builder.response)
            } catch {
                stream.cancel()
                requests.finished(record, firstToken: run.firstToken, completionTokens: run.state.tokens, cancelled: true)
                throw error
            }
        })
    }

    struct Prepared: @unchecked Sendable {
        var prompt: [Int32]
        var text: String
        var tools: Set<String>?
        var constraint: (TokenConstraint, ReasoningGate?)?
        var options: GenerationOptions
    }

    /// Renders the conversation with the model's template (off the request threads). With
    /// `truncation: "auto"` the oldest items are dropped until the prompt and the output fit.
    func prepare(_ r: ResponseRequest, history: [JSONValue]) async throws -> Prepared {
        let service = self.service
        let limit = service.contextLimit
        return try await Offload.run {
            func attempt(_ skip: Int) throws -> Prepared {
                let fields = try RequestFields(r.chatBody(history: history, skip: skip))
                let o = try GenerationOptions.parse(fields, chat: true, vocabSize: service.tokenizer.vocabularySize)
                let p = try service.chatPrompt(fields)
                let tokens = service.renderer.tokens(p.prompt)
                return Prepared(prompt: tokens, text: p.prompt.text, tools: p.tools,
                                constraint: try service.constraint(fields, chat: true, promptText: p.prompt.text), options: o)
            }
            func fits(_ p: Prepared) -> Bool { p.prompt.count + (p.options.maxTokens ?? 1) <= limit && p.prompt.count < limit }
            let whole = try attempt(0)
            guard r.truncation == "auto", !fits(whole) else { return whole }
            // Fewer messages never make a longer prompt: the fewest dropped that fit, by bisection.
            let count = (r.chatBody(history: history)["messages"]?.array?.count ?? 1) - (r.instructions == nil ? 0 : 1)
            var lo = 1, hi = max(count - 1, 1)
            var best: Prepared?
            while lo <= hi {
                let mid = (lo + hi) / 2
                let p = try attempt(mid)
                if fits(p) { best = p; hi = mid - 1 } else { lo = mid + 1 }
            }
            return best ?? whole
        }
    }
}
