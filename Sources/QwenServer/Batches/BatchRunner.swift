import Foundation
import Hummingbird
import Logging
import NIOCore
import QwenChat
import QwenEngine
import QwenFormats

/// Runs batches on the serving engine at batch priority: validates a batch's input, runs its
/// lines through the very endpoints interactive requests use (as many at once as the engine has
/// slots), records each line's result once, and writes the output and error files. A batch is
/// claimed from the store and held with a lease renewed every second, so with replicas on one
/// PostgreSQL each batch runs on one of them and a cancel through any reaches it. Work left by a
/// stopped or killed server resumes at its restart, or on another replica once the lease runs
/// out: recorded lines are kept, the others run again.
final class BatchRunner: @unchecked Sendable {
    let store: BatchStore
    let files: any FineTuningStore
    /// Where output files are written before the store takes them.
    let scratch: String
    let service: ModelService
    let responses: ResponsesController
    /// Lines in flight at once.
    let concurrency: Int
    let maxFileBytes: Int
    /// This replica's node id, and how long its hold on a batch lasts without renewal.
    let node: String
    let lease: Double
    let log = Logger(label: "qwen-serve.batches")

    private let lock = NSLock()
    private var stopping = false
    private var cancelRequested: Set<String> = []
    private var cancellers: [String: CancelGroup] = [:]
    /// Batches whose hold ran out while they ran here: their work stops, unrecorded.
    private var lost: Set<String> = []
    private var kicked = false

    init(store: BatchStore, files: any FineTuningStore, scratch: String, service: ModelService, responses: ResponsesController, concurrency: Int,
         maxFileBytes: Int, node: String, lease: Double) {
        self.store = store
        self.files = files
        self.scratch = scratch
        self.service = service
        self.responses = responses
        self.concurrency = max(1, concurrency)
        self.maxFileBytes = maxFileBytes
        self.node = node
        self.lease = lease
    }

    private var loopEnded = false

    func start() {
        Task.detached {
            await self.loop()
            self.lock.withLock { self.loopEnded = true }
        }
    }

    /// A new batch or a cancel: look again now.
    func kick() { lock.withLock { kicked = true } }

    /// Shutdown: lines in flight are abandoned (not recorded), to run again at the next start or
    /// on another replica, which can claim the batch at once: this waits (a few seconds at most)
    /// until the runner has handed it back.
    func stop() async {
        let all: [CancelGroup] = lock.withLock {
            stopping = true
            return Array(cancellers.values)
        }
        for c in all { c.cancel() }
        kick()
        for _ in 0..<100 where !lock.withLock({ loopEnded }) { try? await Task.sleep(for: .milliseconds(50)) }
    }

    var isStopping: Bool { lock.withLock { stopping } }
    func cancelIsRequested(_ id: String) -> Bool { lock.withLock { cancelRequested.contains(id) } }
    /// Work on this batch stops here, unrecorded: the server is stopping or the hold ran out.
    func abandons(_ id: String) -> Bool { lock.withLock { stopping || lost.contains(id) } }

    /// Moves a batch to `cancelling` (unless it has ended); its runner, here or on another
    /// replica at its next heartbeat, stops its lines in flight and finalizes it.
    func cancel(_ id: String) async throws -> Batch? {
        let b = try await store.transition(id) { b in
            guard !b.isFinal, b.status != "cancelling", b.status != "finalizing" else { return false }
            b.status = "cancelling"
            b.cancelling_at = Self.now
            return true
        }
        if b?.status == "cancelling" { cancelHere(id) }
        kick()
        return b
    }

    /// Stops the lines in flight of a batch being cancelled, when it runs here.
    private func cancelHere(_ id: String) {
        let c: CancelGroup? = lock.withLock {
            guard let c = cancellers[id] else { return nil }
            cancelRequested.insert(id)
            return c
        }
        c?.cancel()
    }

    static var now: Int { Int(Date().timeIntervalSince1970) }

    /// Reads a batch fresh under its row's lock, changes it and writes it back.
    @discardableResult
    private func transition(_ id: String, _ change: @escaping @Sendable (inout Batch) -> Bool) async -> Batch? {
        do { return try await store.transition(id, change) } catch {
            log.error("batch \(id) could not be saved: \(error)")
            return nil
        }
    }

    // MARK: The loop

    private func loop() async {
        while !isStopping {
            // takeOver: a batch this node held before it restarted is its own to go on with.
            guard let b = try? await store.claim(node: node, lease: lease, takeOver: true) else {
                // Nothing to do (or the store is away): a pause, cut short by a new batch or a cancel.
                await pause(seconds: 1)
                continue
            }
            let hold = Task { await self.keepHeld(b.id) }
            await run(b)
            // The heartbeat ends before the release, so no late renewal can take the released batch for lost.
            hold.cancel()
            await hold.value
            if lock.withLock({ lost.remove(b.id) }) != nil {
                log.warning("batch \(b.id): another replica took it over (this one's hold ran out); its work here stopped")
            } else {
                try? await store.release(b.id, node: node)
            }
            lock.withLock { _ = cancelRequested.remove(b.id) }
            // A batch that could not end now (its store failing) is tried again after a pause, not in a busy loop.
            if !isStopping, (try? await store.get(b.id))?.isFinal != true { await pause(seconds: 1) }
        }
    }

    /// Renews the hold on a running batch every second: a cancel asked through another replica
    /// stops its lines here; a hold that was lost stops its work.
    private func keepHeld(_ id: String) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { return }
            do {
                guard let b = try await store.renew(id, node: node, lease: lease) else {
                    let c: CancelGroup? = lock.withLock {
                        lost.insert(id)
                        return cancellers[id]
                    }
                    c?.cancel()
                    return
                }
                if b.status == "cancelling" { cancelHere(id) }
            } catch {
                // The store is away: keep running; line results are written once whoever records them.
                continue
            }
        }
    }

    /// Waits up to `seconds`, or until `kick()` or `stop()`.
    private func pause(seconds: Double) async {
        var waited = 0.0
        while waited < seconds {
            let go: Bool = lock.withLock {
                defer { kicked = false }
                return kicked || stopping
            }
            if go { return }
            try? await Task.sleep(nanoseconds: 100_000_000)
            waited += 0.1
        }
    }

    private func run(_ batch: Batch) async {
        var b = batch
        if b.status == "cancelling" { cancelRequestedInsert(b.id) }
        if b.status == "validating" {
            guard let next = await validate(b) else { return }
            b = next
        }
        if b.status == "in_progress" {
            if Self.now >= b.expires_at { return await finalize(b.id, as: "expired") }
            guard await runLines(b) else { return }
            if abandons(b.id) { return }
            if Self.now >= b.expires_at, ((try? await store.pendingLines(b.id)) ?? []).count > 0 { return await finalize(b.id, as: "expired") }
        }
        if abandons(b.id) { return }
        await finalize(b.id, as: cancelIsRequested(b.id) ? "cancelled" : "completed")
    }

    private func cancelRequestedInsert(_ id: String) { lock.withLock { _ = cancelRequested.insert(id) } }

    /// Checks every line; the batch becomes `in_progress` with its lines stored, or `failed` with the problems.
    private func validate(_ b: Batch) async -> Batch? {
        let bytes: [UInt8]
        do {
            guard let f = try await files.file(b.input_file_id) else { throw APIError.badParam("input_file_id", "the input file was deleted") }
            bytes = [UInt8](try SafeFile.read(try await files.fileContent(f.id), maxBytes: maxFileBytes))
        } catch let e as StoreError {
            // The shared store is away: the batch stays as it is, to be validated once it answers.
            log.warning("batch \(b.id): its input file cannot be read now: \(e)")
            return nil
        } catch {
            let message = "the input file cannot be read: \((error as? APIError)?.message ?? "\(error)")"
            await transition(b.id) { b in
                b.status = "failed"
                b.failed_at = Self.now
                b.errors = .init(data: [.init(code: "invalid_file", message: message, param: "input_file_id")])
                return true
            }
            return nil
        }
        let service = self.service, endpoint = b.endpoint
        let checked = (try? await Offload.run { BatchInput.check(bytes: bytes, endpoint: endpoint, service: service) }) ?? BatchInput.Checked()
        if checked.problemCount > 0 {
            let errors = checked.errors
            await transition(b.id) { b in
                b.status = "failed"
                b.failed_at = Self.now
                b.errors = .init(data: errors)
                return true
            }
            return nil
        }
        do { try await store.addLines(b.id, checked.lines) } catch {
            log.error("batch \(b.id): its lines could not be stored: \(error)")
            return nil
        }
        return await transition(b.id) { b in
            guard b.status == "validating" else { return false }
            b.status = "in_progress"
            b.in_progress_at = Self.now
            return true
        }
    }

    /// Runs the pending lines, `concurrency` at a time, until done, cancelled, expired or
    /// abandoned; false when the lines could not be read.
    private func runLines(_ b: Batch) async -> Bool {
        guard let pending = try? await store.pendingLines(b.id) else { return false }
        if pending.isEmpty { return true }
        let canceller = CancelGroup()
        lock.withLock { cancellers[b.id] = canceller }
        defer { _ = lock.withLock { cancellers.removeValue(forKey: b.id) } }
        if cancelIsRequested(b.id) || abandons(b.id) { return true }
        await withTaskGroup(of: Void.self) { group in
            var inFlight = 0
            for line in pending {
                if abandons(b.id) || cancelIsRequested(b.id) || Self.now >= b.expires_at { break }
                if inFlight >= concurrency {
                    await group.next()
                    inFlight -= 1
                }
                group.addTask { await self.runLine(b, line, canceller) }
                inFlight += 1
            }
            await group.waitForAll()
        }
        return true
    }

    private func runLine(_ b: Batch, _ line: BatchLine, _ group: CancelGroup) async {
        let canceller = LineCancel()
        group.add(canceller)
        defer { group.remove(canceller) }
        let invocation = BatchInvocation(caller: Caller(cacheSalt: 0, seesServerPaths: false, owner: "", priority: .batch), canceller: canceller)
        var body = line.body
        // A batch's responses are in its output file; they are stored only when a line asks.
        if b.endpoint == "/v1/responses", body["store"] == nil, case .object(var pairs) = body {
            pairs.append(("store", .bool(false)))
            body = .object(pairs)
        }
        while true {
            let (status, answer) = await execute(b.endpoint, body, invocation)
            // Abandoned (cancel, shutdown): not recorded; a restart runs it again.
            if abandons(b.id) || cancelIsRequested(b.id) || canceller.isCancelled { return }
            if status == 429 {
                // The engine's queue is full of interactive work: wait and try again.
                try? await Task.sleep(nanoseconds: 500_000_000)
                continue
            }
            let out = BatchOutputLine(id: IDs.make("batch_req_"), custom_id: line.customID,
                                      response: Nullable(.init(status_code: status, request_id: answer["id"]?.string ?? IDs.make("req_"), body: answer)),
                                      error: Nullable(nil))
            do { _ = try await store.finish(b.id, line: line.line, ok: status == 200, output: ResponseJSON.encode(out)) } catch {
                log.error("batch \(b.id) line \(line.line): the result could not be stored: \(error)")
            }
            return
        }
    }

    /// One request through its endpoint, as an HTTP request would run it; the status and JSON body.
    func execute(_ endpoint: String, _ body: JSONValue, _ invocation: BatchInvocation) async -> (Int, JSONValue) {
        do {
            let response: Response
            switch endpoint {
            case "/v1/completions": response = try await service.completions(body, invocation)
            case "/v1/responses": response = try await responses.create(body, invocation)
            default: response = try await service.chatCompletions(body, invocation)
            }
            let collector = BodyCollector()
            try await response.body.write(collector)
            return (Int(response.status.code), (try? JSONValue.parse(collector.bytes)) ?? .null)
        } catch let e as APIError {
            return (e.status.code, e.json)
        } catch {
            let id = IDs.make("err-")
            log.error("internal error \(id) in a batch line: \(error)")
            return (500, APIError(.internalServerError, "internal server error (\(id))").json)
        }
    }

    // MARK: Finishing

    /// Writes the output and error files (lines in input order) and ends the batch as `status`.
    private func finalize(_ id: String, as status: String) async {
        // A batch another runner ended meanwhile (this one's hold ran out) stays as it ended.
        guard let b = await transition(id, { b in
            guard !b.isFinal else { return false }
            b.status = "finalizing"
            b.finalizing_at = Self.now
            return true
        }), !b.isFinal else { return }
        // A cancel may have come through another replica after this run began.
        let status = status == "completed" && b.cancelling_at != nil ? "cancelled" : status
        if status == "expired" {
            for line in (try? await store.pendingLines(id)) ?? [] {
                let out = BatchOutputLine(id: IDs.make("batch_req_"), custom_id: line.customID, response: Nullable(nil),
                                          error: Nullable(.init(code: "batch_expired", message: "This request could not be executed before the completion window expired.")))
                _ = try? await store.finish(id, line: line.line, ok: false, output: ResponseJSON.encode(out))
            }
        }
        guard let outs = try? await store.outputs(id) else { return }
        let suffix = String(id.dropFirst("batch_".count))
        let outputID = await writeFile(id: "file-" + suffix, name: "batch_\(suffix)_output.jsonl", lines: outs.filter(\.ok).map(\.output))
        var errSuffix = String(suffix.reversed())
        if errSuffix == suffix { errSuffix = "z" + errSuffix.dropFirst() }
        let errorID = await writeFile(id: "file-" + errSuffix, name: "batch_\(suffix)_error.jsonl", lines: outs.filter { !$0.ok }.map(\.output))
        await transition(id) { b in
            guard b.status == "finalizing" else { return false }
            b.status = status
            b.output_file_id = outputID
            b.error_file_id = errorID
            switch status {
            case "cancelled": b.cancelled_at = Self.now
            case "expired": b.expired_at = Self.now
            default: b.completed_at = Self.now
            }
            return true
        }
    }

    /// A `batch_output` file holding `lines` (written whole, then renamed into place); nil when there are none.
    private func writeFile(id: String, name: String, lines: [String]) async -> String? {
        guard !lines.isEmpty else { return nil }
        let data = Data((lines.joined(separator: "\n") + "\n").utf8)
        do {
            let tmp = scratch + "/\(id).part"
            try AtomicFile.write(data, to: tmp)
            _ = try? await files.deleteFile(id)
            try await files.insertFile(FileObject(id: id, bytes: data.count, created_at: Self.now, filename: name, purpose: "batch_output", status: "processed"),
                                       content: tmp)
            return id
        } catch {
            log.error("\(name) could not be written: \(error)")
            return nil
        }
    }
}
