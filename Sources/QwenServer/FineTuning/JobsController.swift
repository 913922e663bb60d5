import Foundation
import Hummingbird
import QwenChat
import QwenKernels
import QwenModel
import QwenTraining

/// OpenAI's fine-tuning jobs API over the JobManager, and `DELETE /v1/models/{name}` for the
/// models jobs make.
struct JobsController {
    let manager: JobManager
    let models: FineTunedModels
    let service: ModelService
    let limit: Int

    func addRoutes(to group: RouterGroup<QwenRequestContext>) {
        group.post("fine_tuning/jobs") { req, _ -> Response in
            try FilesController.json(try await create(try await HTTPServer.body(req, limit: limit)))
        }
        group.get("fine_tuning/jobs") { req, _ -> Response in
            let (items, more) = try await manager.store.jobs(after: req.uri.queryParameters.get("after"),
                                                        limit: try FilesController.limit(req, default: 20, max: 100))
            return try FilesController.json(FilesController.Page(data: items, has_more: more, first_id: items.first?.id, last_id: items.last?.id))
        }
        group.get("fine_tuning/jobs/:id") { _, ctx -> Response in try FilesController.json(try await job(ctx)) }
        group.post("fine_tuning/jobs/:id/cancel") { _, ctx -> Response in try await act(.cancel, ctx) }
        group.post("fine_tuning/jobs/:id/pause") { _, ctx -> Response in try await act(.pause, ctx) }
        group.post("fine_tuning/jobs/:id/resume") { _, ctx -> Response in
            let j = try await job(ctx)
            guard j.status == .paused else {
                throw APIError(.badRequest, "only a paused job can be resumed; this one is \(j.status.rawValue)", param: "fine_tuning_job_id", code: "invalid_state")
            }
            return try FilesController.json(try await manager.resume(job: j.id) ?? j)
        }
        group.get("fine_tuning/jobs/:id/events") { req, ctx -> Response in
            let j = try await job(ctx)
            let (items, more) = try await manager.store.events(job: j.id, after: req.uri.queryParameters.get("after"),
                                                          limit: try FilesController.limit(req, default: 20, max: 1000))
            return try FilesController.json(EventPage(data: items.map(EventJSON.init), has_more: more))
        }
        group.get("fine_tuning/jobs/:id/checkpoints") { req, ctx -> Response in
            let j = try await job(ctx)
            let (items, more) = try await manager.store.checkpoints(job: j.id, after: req.uri.queryParameters.get("after"),
                                                               limit: try FilesController.limit(req, default: 10, max: 100))
            return try FilesController.json(FilesController.Page(data: items.map(CheckpointJSON.init), has_more: more,
                                                                 first_id: items.first?.id, last_id: items.last?.id))
        }
        // ":id", as the GET route beside it names the parameter (the router keeps one name per position).
        group.delete("models/:id") { _, ctx -> Response in try await deleteModel(ctx.pathParameter("id")) }
    }

    func job(_ ctx: QwenRequestContext) async throws -> FineTuningJob {
        let id = ctx.pathParameter("id")
        guard FilesController.validID(id, prefix: "ftjob-"), let j = try await manager.store.job(id) else {
            throw APIError(.notFound, "No such fine-tuning job: \(id.prefix(64))", param: "fine_tuning_job_id", code: "fine_tuning_job_not_found")
        }
        return j
    }

    func act(_ a: JobAction, _ ctx: QwenRequestContext) async throws -> Response {
        let j = try await job(ctx)
        if j.isFinal || (a == .pause && j.status == .paused) {
            throw APIError(.badRequest, "the job is already \(j.status.rawValue)", param: "fine_tuning_job_id", code: "invalid_state")
        }
        return try FilesController.json(try await manager.request(a, job: j.id) ?? j)
    }

    struct EventPage: Encodable {
        var object = "list"
        var data: [EventJSON]
        var has_more: Bool
    }

    /// An event as OpenAI shapes it: `data` is an object (stored as JSON text).
    struct EventJSON: Encodable {
        let e: JobEvent
        enum K: String, CodingKey { case id, object, created_at, level, message, type, data }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: K.self)
            try c.encode(e.id, forKey: .id)
            try c.encode(e.object, forKey: .object)
            try c.encode(e.created_at, forKey: .created_at)
            try c.encode(e.level, forKey: .level)
            try c.encode(e.message, forKey: .message)
            try c.encode(e.type, forKey: .type)
            try c.encode(e.data.flatMap { try? JSONDecoder().decode([String: Double].self, from: Data($0.utf8)) }, forKey: .data)
        }
    }

    struct CheckpointJSON: Encodable {
        let c: JobCheckpoint
        enum K: String, CodingKey { case id, object, created_at, fine_tuning_job_id, step_number, metrics, fine_tuned_model_checkpoint }
        func encode(to encoder: Encoder) throws {
            var k = encoder.container(keyedBy: K.self)
            try k.encode(c.id, forKey: .id)
            try k.encode(c.object, forKey: .object)
            try k.encode(c.created_at, forKey: .created_at)
            try k.encode(c.fine_tuning_job_id, forKey: .fine_tuning_job_id)
            try k.encode(c.step_number, forKey: .step_number)
            try k.encode((try? JSONDecoder().decode([String: Double].self, from: Data(c.metrics.utf8))) ?? [:], forKey: .metrics)
            try k.encode(c.fine_tuned_model_checkpoint, forKey: .fine_tuned_model_checkpoint)
        }
    }

    // MARK: Creating a job

    /// Base learning rate that learning_rate_multiplier scales (the reference LoRA run's).
    static let baseLearningRate = 1e-4

    func create(_ body: JSONValue) async throws -> FineTuningJob {
        guard case .object = body else { throw APIError(.badRequest, "the request body must be a JSON object") }
        func str(_ k: String, required: Bool = false) throws -> String? {
            switch body[k] {
            case .none, .some(.null):
                if required { throw APIError.badParam(k, "'\(k)' is required") }
                return nil
            case .some(.string(let s)): return s
            default: throw APIError.badParam(k, "'\(k)' must be a string")
            }
        }
        let model = try str("model", required: true)!
        guard model == service.name else {
            throw APIError(.notFound, "The model '\(model.prefix(128))' is not this server's base model ('\(service.name)'); jobs fine-tune the model being served",
                           param: "model", code: "model_not_found")
        }
        let trainID = try str("training_file", required: true)!
        let train = try await usableFile(trainID, param: "training_file")
        let validID = try str("validation_file")
        var valid: FileObject?
        if let validID { valid = try await usableFile(validID, param: "validation_file") }
        let suffix = try str("suffix")
        if let s = suffix {
            guard s.count <= 40, s.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII || "-_.".unicodeScalars.contains($0) }) else {
                throw APIError.badParam("suffix", "'suffix' must be up to 40 letters, digits, '-', '_' or '.'")
            }
        }
        var seed = Int.random(in: 0..<(1 << 31))
        if let s = body["seed"] {
            guard case .int(let v) = s, v >= 0, v < 1 << 31 else { throw APIError.badParam("seed", "'seed' must be a whole number from 0 to 2147483647") }
            seed = v
        }
        var metadata: [String: String]?
        if let m = body["metadata"], m != .null {
            guard case .object(let pairs) = m, pairs.count <= 16 else { throw APIError.badParam("metadata", "'metadata' must be an object of up to 16 strings") }
            metadata = [:]
            for (k, v) in pairs {
                guard let s = v.string, k.count <= 64, s.count <= 512 else { throw APIError.badParam("metadata", "'metadata' values must be strings (keys ≤ 64, values ≤ 512 characters)") }
                metadata![k] = s
            }
        }
        // Hyperparameters: top-level (legacy) or method.supervised.hyperparameters.
        var hp: JSONValue = body["hyperparameters"] ?? .null
        var hpParam = "hyperparameters"
        if let m = body["method"], m != .null {
            guard case .object = m else { throw APIError.badParam("method", "'method' must be an object") }
            let t = m["type"]?.string ?? "supervised"
            guard t == "supervised" else {
                throw APIError(.badRequest, "method.type '\(t.prefix(32))' is not supported; this server trains supervised LoRA adapters",
                               param: "method.type", code: "unsupported_method")
            }
            if let h = m["supervised"]?["hyperparameters"], h != .null {
                hp = h
                hpParam = "method.supervised.hyperparameters"
            }
        }
        if hp != .null { guard case .object = hp else { throw APIError.badParam(hpParam, "'\(hpParam)' must be an object") } }
        func number(_ k: String, auto: Double, range: ClosedRange<Double>, whole: Bool) throws -> Double {
            switch hp[k] {
            case .none, .some(.null), .some(.string("auto")): return auto
            case .some(.int(let i)) where range.contains(Double(i)): return Double(i)
            case .some(.double(let d)) where !whole && range.contains(d): return d
            default:
                throw APIError.badParam("\(hpParam).\(k)", "'\(k)' must be \"auto\" or a \(whole ? "whole " : "")number from \(range.lowerBound) to \(range.upperBound)")
            }
        }
        let known: Set<String> = ["n_epochs", "batch_size", "learning_rate_multiplier", "rank", "alpha", "scale", "dropout",
                                  "target_modules", "num_layers", "max_seq_length", "checkpoint_every"]
        if case .object(let pairs) = hp {
            for (k, _) in pairs where !known.contains(k) { throw APIError.badParam("\(hpParam).\(k)", "unknown hyperparameter '\(k.prefix(64))'") }
        }
        let examples = train.lines ?? 1
        // "auto": about 256 steps over the data (at least 1 epoch, at most 10), batch 1, multiplier 1.
        let epochs = Int(try number("n_epochs", auto: Double(min(10, max(1, (256 + examples - 1) / examples))), range: 1...50, whole: true))
        let batch = Int(try number("batch_size", auto: 1, range: 1...64, whole: true))
        let mult = try number("learning_rate_multiplier", auto: 1, range: 1e-3...100, whole: false)
        let rank = Int(try number("rank", auto: 8, range: 1...256, whole: true))
        var scale = try number("scale", auto: 20, range: 1e-3...1e4, whole: false)
        if hp["alpha"] != nil, hp["alpha"] != .null {
            guard hp["scale"] == nil || hp["scale"] == .null else { throw APIError.badParam("\(hpParam).alpha", "give 'alpha' or 'scale', not both") }
            scale = try number("alpha", auto: 160, range: 1e-3...1e5, whole: false) / Double(rank)
        }
        let dropout = try number("dropout", auto: 0, range: 0...0.9, whole: false)
        let layers = Int(try number("num_layers", auto: -1, range: -1...Double(service.engine.model.config.layers), whole: true))
        guard layers != 0 else { throw APIError.badParam("\(hpParam).num_layers", "'num_layers' must be -1 (all) or at least 1") }
        let maxSeq = Int(try number("max_seq_length", auto: 512, range: 16...Double(service.engine.model.config.maxPositions), whole: true))
        let perEpoch = max(1, examples / batch)
        let every = Int(try number("checkpoint_every", auto: Double(min(perEpoch, 50)), range: 1...100_000, whole: true))
        var modules = ["q_proj", "v_proj"]
        if let t = hp["target_modules"], t != .null {
            guard let a = t.array, !a.isEmpty, a.count <= 7 else { throw APIError.badParam("\(hpParam).target_modules", "'target_modules' must be a list of projection names") }
            modules = try a.map { v in
                guard let s = v.string, Projection.allCases.contains(where: { $0.shortName == s || $0.module == s }) else {
                    throw APIError.badParam("\(hpParam).target_modules", "the model has no module \(v.string.map { "'\($0.prefix(64))'" } ?? "of that name"); it has \(Projection.allCases.map(\.shortName).joined(separator: ", "))")
                }
                return s
            }
        }
        guard examples >= batch else {
            throw APIError.badParam("\(hpParam).batch_size", "the training file has \(examples) examples, fewer than batch_size \(batch)")
        }
        let lora = FineTuningJob.LoRA(rank: rank, scale: scale, dropout: dropout, target_modules: modules, num_layers: layers,
                                      max_seq_length: maxSeq, learning_rate: Self.baseLearningRate * mult, checkpoint_every: every)
        // The memory plan, before anything is queued.
        let longest = min(maxSeq, max(train.max_tokens ?? maxSeq, valid?.max_tokens ?? 0))
        let cfg = service.engine.model.config
        let lowest = layers < 0 ? 0 : cfg.layers - layers
        let planned = TrainingBuffersPlan.bytes(rows: batch * longest, longest: longest, config: cfg, lowestLayer: lowest, rank: rank,
                                                 dropout: dropout > 0)
        let available = manager.memoryLimit ?? MemoryProbe.availableBytes() ?? Int.max
        guard planned <= available else {
            throw APIError(.badRequest, String(format: "this job needs about %.2f GB beside the served model but %.2f GB are available; lower batch_size or max_seq_length, or train fewer layers",
                                               Double(planned) / 1e9, Double(available) / 1e9), param: "\(hpParam).batch_size", code: "insufficient_memory")
        }
        var job = FineTuningJob(id: IDs.make("ftjob-"), created_at: Int(Date().timeIntervalSince1970),
                                hyperparameters: .init(batch_size: batch, learning_rate_multiplier: mult, n_epochs: epochs), model: model,
                                seed: seed, status: .validating_files, training_file: train.id, validation_file: valid?.id,
                                metadata: metadata, suffix: suffix, lora: lora)
        job.total_steps = perEpoch * epochs
        try await manager.submitted(job)
        return try await manager.store.job(job.id) ?? job
    }

    func usableFile(_ id: String, param: String) async throws -> FileObject {
        guard FilesController.validID(id, prefix: "file-"), let f = try await manager.store.file(id) else {
            throw APIError(.badRequest, "no file with id '\(id.prefix(64))' (it may have been deleted)", param: param, code: "file_not_found")
        }
        guard f.purpose == "fine-tune" else {
            throw APIError(.badRequest, "file \(id) was uploaded with purpose '\(f.purpose)', not 'fine-tune'", param: param, code: "invalid_file_purpose")
        }
        guard f.status == "processed" else {
            throw APIError(.badRequest, "file \(id) is not valid training data: \(f.status_details ?? f.status)", param: param, code: "invalid_training_file")
        }
        return f
    }

    /// Deletes a fine-tuned model (or checkpoint) from the store, so every replica stops
    /// serving it, and unloads it here at once.
    func deleteModel(_ name: String) async throws -> Response {
        let here = service.adapters.get(name)?.origin == "fine-tune"
        guard name.hasPrefix("ft:"), AdapterRegistry.validName(name) else { throw Self.noModel(name) }
        let stored = try await manager.store.deleteModel(name)
        guard stored || here else { throw Self.noModel(name) }
        await models.forget(name)
        return ModelService.jsonResponse(.object([("id", .string(name)), ("object", .string("model")), ("deleted", .bool(true))]))
    }

    static func noModel(_ name: String) -> APIError {
        APIError(.notFound, "no fine-tuned model named '\(name.prefix(160))' (only models fine-tuning jobs made can be deleted)",
                 param: "model", code: "model_not_found")
    }
}
