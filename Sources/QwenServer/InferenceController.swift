import Hummingbird

/// Chat completions, completions and the model list: the OpenAI routes every API key may use.
struct InferenceController {
    let service: ModelService
    let limit: Int

    func addRoutes(to group: RouterGroup<QwenRequestContext>) {
        let s = service, limit = limit
        group.post("chat/completions") { req, ctx -> Response in
            try await s.chatCompletions(try await HTTPServer.body(req, limit: limit), ctx)
        }
        group.post("completions") { req, ctx -> Response in
            try await s.completions(try await HTTPServer.body(req, limit: limit), ctx)
        }
        group.get("models") { _, ctx -> Response in
            let models = [s.modelObject] + s.adapters.all.map { s.adapterModelObject($0, showPath: ctx.caller.seesServerPaths) }
            return ModelService.typedResponse(ModelList(data: models))
        }
        group.get("models/:id") { _, ctx -> Response in
            let id = ctx.pathParameter("id")
            if id == s.name { return ModelService.typedResponse(s.modelObject) }
            if let e = s.adapters.get(id) { return ModelService.typedResponse(s.adapterModelObject(e, showPath: ctx.caller.seesServerPaths)) }
            throw APIError(.notFound, "The model '\(id)' does not exist", param: "model", code: "model_not_found")
        }
    }
}
