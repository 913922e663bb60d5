import Foundation
import QwenGrammar
import QwenModel
import QwenRuntime
import QwenTokenizer

/// The continuous-batching engine. One thread runs an iteration-level loop: admit waiting
/// requests while KV memory allows, run one forward pass over every running sequence
/// (one decode token each, plus prompt chunks up to a token budget), sample each sequence
/// with its own parameters, stream the tokens out, and retire finished or cancelled
/// sequences at once.
public final class Engine: @unchecked Sendable {
    public struct Config: Sendable {
        /// Sequences in one batch at most.
        public var maxRunning = 64
        /// Requests that may wait for a place; more are refused (HTTP 429).
        public var maxWaiting = 256
        /// Tokens per forward step (decode tokens plus prompt chunks).
        public var stepTokens = 512
        /// KV cache size in blocks of `blockSize` positions.
        public var kvBlocks = 4096
        public var blockSize = 16
        /// How the cache stores keys and values.
        public var kvDType: KVCacheDType = .f32
        /// Speculative decoding (prompt lookup) unless a request says otherwise.
        public var speculative: SpeculativeMode = .auto
        /// Drafted tokens per sequence and step at most.
        public var maxDraftTokens = 12
        /// What one more row costs in a decode step, as a share of a one-row step (the cost
        /// model `auto` weighs drafts with; measured on the default model, int8, 2 cores).
        public var draftRowCost = 0.25
        /// With more decoding sequences than this, `auto` drafts nothing (the step is compute-bound).
        public var speculativeMaxSequences = 16
        public init() {}
    }

    /// What one step did, for metrics.
    public struct StepStats: Sendable {
        public let sequences: Int
        public let tokens: Int
        public let seconds: Double
        /// Speculative tokens the step verified, and how many of them were kept.
        public var draftTokens = 0
        public var acceptedDraftTokens = 0
    }

    public struct Snapshot: Sendable {
        public let running: Int
        public let waiting: Int
        public let kvBlocksUsed: Int
        public let kvBlocksFree: Int
        public let kvBlocksCached: Int
        public let kvBlocksTotal: Int
        /// Engine time spent on interleaved work (fine-tuning) since start, in seconds.
        public var interleavedSeconds: Double = 0
        /// The LoRA adapters of running and of waiting requests, by identity (not held, so an
        /// unload is never kept waiting by a snapshot).
        public var runningAdapters: Set<ObjectIdentifier> = []
        public var waitingAdapters: Set<ObjectIdentifier> = []
    }

    public let model: QwenModel
    public let tokenizer: Tokenizer
    public let config: Config
    let pool: KVPool
    private let cond = NSCondition()
    private var inbox: [Group] = []
    private var waitingCount = 0
    private var accepting = true
    private var stopRequested = false
    private var thread: Thread?
    private var snapshotValue: Snapshot
    private var nextId: UInt64 = 0
    /// Owned by the engine thread; published in the snapshot.
    private var interleavedSeconds: Double = 0

    // Owned by the engine thread.
    private let scheduler: Scheduler
    private let lookup = PromptLookup()

    /// Called on the engine thread after every step, and about once a second when idle
    /// (the daemon's watchdog hangs off this).
    public var onStep: (@Sendable (StepStats?) -> Void)?

    /// Work that runs on the engine thread between inference steps (a fine-tuning job), set
    /// once before `start`. With requests waiting it gets `trainShare` of the engine's time,
    /// in pieces; with none it gets all of it.
    public var interleaved: InterleavedWork?
    /// The share (0–1) of engine time interleaved work may take while requests run.
    public var trainShare = 0.3
    /// Seconds of interleaved work earned by inference steps and not yet spent.
    private var credit = 0.0

    /// Proposes drafts with a second model of the same vocabulary (`--draft-model`), if any.
    public let drafter: DraftModel?

    public init(model: QwenModel, tokenizer: Tokenizer, config: Config = Config(), draft: QwenModel? = nil) {
        drafter = draft.map { DraftModel(model: $0, blocks: config.kvBlocks, blockSize: config.blockSize, dtype: config.kvDType) }
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        pool = KVPool(config: model.config, blocks: config.kvBlocks, blockSize: config.blockSize, dtype: config.kvDType)
        scheduler = Scheduler(config: .init(maxRunning: config.maxRunning, stepTokens: config.stepTokens), pool: pool)
        snapshotValue = Snapshot(running: 0, waiting: 0, kvBlocksUsed: 0, kvBlocksFree: config.kvBlocks, kvBlocksCached: 0,
                                 kvBlocksTotal: config.kvBlocks)
    }

    /// KV blocks for a memory budget in bytes.
    public static func blocks(forBytes bytes: Int, config: QwenConfig, blockSize: Int = 16, dtype: KVCacheDType = .f32) -> Int {
        let perBlock = 2 * config.layers * blockSize * dtype.rowBytes(kvHeads: config.kvHeads, headDim: config.headDim)
        return max(1, bytes / perBlock)
    }

    /// The longest prompt (plus one generated token) the KV cache can ever hold.
    public var maxSequenceTokens: Int { min(config.kvBlocks * config.blockSize, model.config.maxPositions) }

    public func start() {
        let t = Thread { [weak self] in self?.loop() }
        t.name = "qwen-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    public var snapshot: Snapshot {
        cond.lock()
        defer { cond.unlock() }
        return snapshotValue
    }

    // MARK: Submitting

    /// A request in flight: its events, and a way to cancel it.
    public final class Stream: @unchecked Sendable {
        public let events: AsyncStream<EngineEvent>
        let group: Group
        init(events: AsyncStream<EngineEvent>, group: Group) {
            self.events = events
            self.group = group
        }
        public func cancel() { group.cancel() }
        /// Ends one choice (e.g. it hit a stop sequence); the others go on.
        public func cancel(choice: Int) { group.cancel(choice: choice) }
    }

    /// Events a request may have waiting for its reader; a reader this far behind is cut
    /// off (its sequences cancelled) instead of growing memory without bound.
    public static let maxBufferedEvents = 16384

    public func submit(_ r: EngineRequest) throws -> Stream {
        guard !r.prompt.isEmpty else { throw EngineError.invalidRequest("the prompt is empty") }
        guard r.n >= 1 else { throw EngineError.invalidRequest("n must be at least 1") }
        guard r.maxTokens >= 1 else { throw EngineError.invalidRequest("max_tokens must be at least 1") }
        for t in r.prompt where t < 0 || Int(t) >= model.config.vocabSize {
            throw EngineError.invalidRequest("token id \(t) is outside the vocabulary (0..<\(model.config.vocabSize))")
        }
        let limit = maxSequenceTokens
        guard r.prompt.count + 1 <= limit else { throw EngineError.promptTooLong(tokens: r.prompt.count, limit: limit - 1) }
        var cont: AsyncStream<EngineEvent>.Continuation!
        let events = AsyncStream<EngineEvent>(bufferingPolicy: .bufferingOldest(Self.maxBufferedEvents)) { cont = $0 }
        cond.lock()
        defer { cond.unlock() }
        guard accepting else { throw EngineError.shuttingDown }
        guard waitingCount < config.maxWaiting else { throw EngineError.queueFull(waiting: waitingCount) }
        nextId += 1
        let g = Group(id: nextId, request: r, continuation: cont)
        cont.onTermination = { [weak g] _ in g?.cancel() }
        inbox.append(g)
        waitingCount += 1
        cond.signal()
        return Stream(events: events, group: g)
    }

    /// Stops accepting requests, lets running ones finish for up to `grace` seconds,
    /// cancels what is left, and stops the thread.
    public func shutdown(grace: Double) {
        cond.lock()
        accepting = false
        cond.unlock()
        let deadline = Date().addingTimeInterval(grace)
        while Date() < deadline {
            let s = snapshot
            cond.lock()
            let pending = inbox.count
            cond.unlock()
            if s.running == 0 && s.waiting == 0 && pending == 0 { break }
            usleep(20_000)
        }
        cond.lock()
        stopRequested = true
        cond.signal()
        cond.unlock()
        while let t = thread, !t.isFinished { usleep(5_000) }
    }

    // MARK: The loop

    private func loop() {
        while true {
            cond.lock()
            while inbox.isEmpty && scheduler.isIdle && !stopRequested {
                if interleaved?.hasWork == true {
                    // Nothing to serve: the interleaved work takes the engine, a piece at a time
                    // so that an arriving request waits at most one piece.
                    cond.unlock()
                    _ = runPiece()
                    publishSnapshot()
                    onStep?(nil)
                    cond.lock()
                    continue
                }
                if !cond.wait(until: Date().addingTimeInterval(1)) {
                    cond.unlock()
                    onStep?(nil)
                    cond.lock()
                }
            }
            let arrived = inbox
            inbox.removeAll()
            let stop = stopRequested
            cond.unlock()
            for g in arrived { scheduler.enqueue(g.makeFirstSequence(gate: OutputGate(request: g.request, tokenizer: tokenizer))) }
            if stop {
                for s in scheduler.drain() { finish(s, .cancelled) }
                publishSnapshot()
                return
            }
            let stats = step()
            heartbeats()
            publishSnapshot()
            onStep?(stats)
            runInterleaved(after: stats)
        }
    }

    /// After an inference step of d seconds, interleaved work earns d · share / (1 − share)
    /// and runs pieces while it has credit (so it takes about `share` of the time).
    private func runInterleaved(after stats: StepStats?) {
        guard let work = interleaved, work.hasWork else {
            credit = 0
            return
        }
        let share = min(max(trainShare, 0), 0.95)
        guard share > 0 else { return }
        if let stats { credit = min(credit + stats.seconds * share / (1 - share), 2) }
        while credit > 0 && work.hasWork {
            credit -= runPiece()
        }
    }

    /// One piece of the interleaved work; returns the seconds it took.
    private func runPiece() -> Double {
        let t0 = DispatchTime.now()
        interleaved?.runPiece()
        let spent = Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e9
        interleavedSeconds += spent
        return spent
    }

    /// Requests that have heard nothing for a second get a heartbeat.
    private func heartbeats() {
        let now = DispatchTime.now().uptimeNanoseconds
        var seen = Set<ObjectIdentifier>()
        for s in scheduler.waiting + scheduler.running where seen.insert(ObjectIdentifier(s.group)).inserted {
            if now &- s.group.lastEmit > 1_000_000_000 { s.group.emit(.heartbeat) }
        }
    }

    private func publishSnapshot() {
        cond.lock()
        waitingCount = scheduler.waiting.count + inbox.count
        snapshotValue = Snapshot(running: scheduler.running.count, waiting: waitingCount, kvBlocksUsed: pool.usedBlocks,
                                 kvBlocksFree: pool.availableBlocks - pool.cachedBlocks, kvBlocksCached: pool.cachedBlocks,
                                 kvBlocksTotal: pool.blockCount, interleavedSeconds: interleavedSeconds,
                                 runningAdapters: Set(scheduler.running.compactMap { $0.group.request.adapter.map(ObjectIdentifier.init) }),
                                 waitingAdapters: Set((scheduler.waiting.map(\.group) + inbox).compactMap { $0.request.adapter.map(ObjectIdentifier.init) }))
        cond.unlock()
    }

    /// One iteration. Returns nil when there was nothing to run.
    private func step() -> StepStats? {
        let start = DispatchTime.now()
        // Retire cancelled sequences (client gone): their blocks are free within this step.
        for s in scheduler.running + scheduler.waiting where s.group.isCancelled(s.index) { finish(s, .cancelled) }
        scheduler.removeFinished()
        let plan = scheduler.schedule { [unowned self] s, decoding, room in self.propose(s, sequences: decoding, room: room) }
        for s in plan.outOfMemory { finish(s, .length) }
        let batch = plan.rows
        guard !batch.isEmpty else { return nil }

        let items = batch.map { (s, n) -> QwenModel.Item in
            let from = s.cache!.length
            if !s.draft.isEmpty {
                // The newest token and the drafts after it, each scored.
                return QwenModel.Item(cache: s.cache!, tokens: [s.tokens[from]] + s.draft, logits: .all, adapter: s.group.request.adapter)
            }
            let completes = from + n == s.tokens.count
            return QwenModel.Item(cache: s.cache!, tokens: Array(s.tokens[from..<(from + n)]), logits: completes ? .last : .none,
                                  adapter: s.group.request.adapter)
        }
        let logits: [[Float]]
        do {
            logits = try model.compute(items)
        } catch {
            for (s, _) in batch { s.group.fail("\(error)"); finish(s, .cancelled) }
            scheduler.removeFinished()
            return nil
        }
        // The positions computed are the caches' now (drafted ones once verification keeps them).
        for (k, (s, _)) in batch.enumerated() where s.draft.isEmpty { s.cache!.advance(items[k].tokens) }
        var spawned: [Seq] = []
        var drafted = 0, kept = 0
        for (k, (s, _)) in batch.enumerated() where !logits[k].isEmpty {
            if !s.draft.isEmpty {
                let accepted = verify(s, logits[k])
                drafted += s.draft.count
                kept += accepted
                s.draft = []
                continue
            }
            if !s.forked && s.group.request.n > 1 {
                // The prompt is in the cache: the other choices share it from here on.
                s.forked = true
                for idx in 1..<s.group.request.n {
                    let sib = s.fork(index: idx)
                    sib.admittedAt = s.admittedAt
                    spawned.append(sib)
                    sample(sib, logits[k])
                }
            }
            sample(s, logits[k])
        }
        scheduler.addRunning(spawned)
        scheduler.removeFinished()
        let tokens = batch.reduce(0) { $0 + $1.1 }
        let secs = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return StepStats(sequences: batch.count, tokens: tokens, seconds: secs, draftTokens: drafted, acceptedDraftTokens: kept)
    }

    /// The tokens `s` drafts this step (see Speculation.swift): none when speculation is off for
    /// it, when the cost model expects no gain, or when no earlier n-gram matches its newest tokens.
    private func propose(_ s: Seq, sequences: Int, room: Int) -> [Int32] {
        let r = s.group.request
        let mode = r.speculative?.mode ?? config.speculative
        guard mode != .off, mode != .auto || sequences <= config.speculativeMaxSequences else { return [] }
        // Room for the drafts and the token after them, within the request and the cache.
        let limit = min(r.speculative?.maxDraftTokens ?? config.maxDraftTokens, room, r.maxTokens - s.generated - 1,
                        maxSequenceTokens - s.tokens.count)
        guard limit > 0 else { return [] }
        let k = s.policy.length(limit: limit, rowCost: config.draftRowCost, sequences: sequences, force: mode == .ngram || mode == .draft)
        guard k > 0 else { return [] }
        // The draft model where there is one (auto or draft), else prompt lookup (a request
        // that asks for `draft` where there is none is refused before it gets here).
        if let drafter, mode != .ngram, r.prediction.isEmpty || mode == .draft {
            return drafter.propose(for: ObjectIdentifier(s), tokens: s.tokens, count: k, vocabulary: model.config.vocabSize)
        }
        return lookup.draft(s.tokens, count: k, reference: r.prediction)
    }

    /// Samples every scored position of a drafted step in turn, as plain decoding would, and keeps
    /// drafted tokens while they are what was sampled. Returns how many drafts were kept; only the
    /// kept positions are recorded in the cache (and so ever published to the prefix cache), and the
    /// blocks reserved for the others go back to the pool.
    private func verify(_ s: Seq, _ rows: [Float]) -> Int {
        let v = model.config.vocabSize
        let draft = s.draft
        let newest = s.tokens[s.cache!.length]
        var kept = 0
        // Counted before sampling: the request's last token may end it, and its usage, mid-run.
        s.group.drafted += draft.count
        for j in 0...draft.count {
            let tok = sample(s, Array(rows[(j * v)..<((j + 1) * v)]), draft: j < draft.count ? draft[j] : nil)
            guard !s.finished, let tok, j < draft.count, tok == draft[j] else { break }
            kept += 1
        }
        s.policy.record(drafted: draft.count, accepted: kept)
        if let c = s.cache, !s.finished {
            c.advance([newest] + draft[0..<kept])
            c.releaseSpareBlocks()
            assert(c.length == s.tokens.count - 1)
        }
        return kept
    }

    /// Chooses `s`'s next token from its row of logits and emits it (or ends the sequence).
    /// Returns the token chosen, nil when the logits were unusable.
    /// `draft`: the token drafted for this position; when it is the one chosen, the request
    /// counts it as kept.
    @discardableResult
    private func sample(_ s: Seq, _ logits: [Float], draft: Int32? = nil) -> Int32? {
        var l = logits
        s.sampler.adjust(&l, history: Array(s.tokens[s.group.request.prompt.count...]))
        s.gate.mask(&l)
        // NaN or +infinity (a broken adapter, an overflow): this sequence ends with an error
        // of its own; its batch-mates, whose rows are independent, go on.
        guard let tok = s.sampler.sampleIfFinite(l) else {
            s.group.fail("the model produced non-finite logits for this sequence; it was stopped")
            finish(s, .cancelled)
            return nil
        }
        let r = s.group.request
        if tok == draft { s.group.acceptedDrafts += 1 }
        let verdict = s.gate.accept(tok)
        switch verdict {
        case .end:
            finish(s, .stop)
            return tok
        case .refused(let message):
            // Unreachable while masks are right; a sequence is never left to run unconstrained.
            s.group.fail(message)
            finish(s, .cancelled)
            return tok
        case .more, .complete:
            break
        }
        var lp: Float? = nil
        var top: [TokenLogprob] = []
        if let k = r.logprobs { (lp, top) = Logprobs.compute(logits, chosen: tok, top: k) }
        s.tokens.append(tok)
        s.generated += 1
        s.group.emit(.token(index: s.index, TokenOutput(token: tok, logprob: lp, top: top)))
        if verdict == .complete {
            // The output is complete: nothing else may follow.
            finish(s, .stop)
        } else if s.generated >= r.maxTokens || s.tokens.count >= maxSequenceTokens {
            finish(s, .length)
        }
        return tok
    }

    private func finish(_ s: Seq, _ reason: FinishReason) {
        guard !s.finished else { return }
        s.finished = true
        drafter?.forget(ObjectIdentifier(s))
        s.cache?.free()
        s.cache = nil
        s.group.finishChoice(s, reason)
    }
}

/// One request: `n` choices that share a prompt.
final class Group: @unchecked Sendable {
    let id: UInt64
    let request: EngineRequest
    private let continuation: AsyncStream<EngineEvent>.Continuation
    private let lock = NSLock()
    private var cancelled = false
    private var finishedChoices = 0
    private var completionTokens = 0
    var cachedTokens = 0
    /// Speculative tokens verified for this request, and how many were kept (engine thread).
    var drafted = 0
    var acceptedDrafts = 0

    init(id: UInt64, request: EngineRequest, continuation: AsyncStream<EngineEvent>.Continuation) {
        self.id = id
        self.request = request
        self.continuation = continuation
    }

    private var cancelledChoices: Set<Int> = []

    func isCancelled(_ index: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled || cancelledChoices.contains(index)
    }

    func cancel() {
        lock.lock()
        cancelled = true
        lock.unlock()
    }

    func cancel(choice: Int) {
        lock.lock()
        cancelledChoices.insert(choice)
        lock.unlock()
    }

    /// When the client last got an event (engine thread only).
    var lastEmit = DispatchTime.now().uptimeNanoseconds

    func emit(_ e: EngineEvent) {
        lastEmit = DispatchTime.now().uptimeNanoseconds
        if case .dropped = continuation.yield(e) {
            // The reader is `maxBufferedEvents` behind: stop producing for it.
            cancel()
        }
    }

    func fail(_ message: String) { continuation.yield(.failed(message)) }

    func makeFirstSequence(gate: OutputGate) -> Seq {
        Seq(group: self, index: 0, tokens: request.prompt, sampler: Sampler(params: request.params), gate: gate)
    }

    func finishChoice(_ s: Seq, _ reason: FinishReason) {
        continuation.yield(.finished(index: s.index, reason: reason))
        completionTokens += s.generated
        finishedChoices += 1
        if !s.forked && request.n > 1 {
            // The other choices were never split off (the prompt never finished): they end too.
            for idx in 1..<request.n { continuation.yield(.finished(index: idx, reason: reason)) }
            finishedChoices = request.n
        }
        if finishedChoices == request.n {
            continuation.yield(.done(EngineUsage(promptTokens: request.prompt.count, completionTokens: completionTokens, cachedTokens: cachedTokens,
                                                 draftTokens: drafted, acceptedDraftTokens: acceptedDrafts)))
            continuation.finish()
        }
    }
}

/// One choice of a request as the engine runs it (public so the scheduler is tested alone).
public final class Seq {
    let group: Group
    public let index: Int
    /// Prompt and generated tokens; the cache holds the first `cache.length` of them.
    public var tokens: [Int32]
    public var generated = 0
    var sampler: Sampler
    /// What may come next (grammar, reasoning block, end tokens).
    var gate: OutputGate
    /// How many tokens it drafts, and this step's drafts (being verified).
    var policy = DraftPolicy()
    public var draft: [Int32] = []
    public internal(set) var cache: KVCache?
    var finished = false
    var forked = false
    var admittedAt = 0

    init(group: Group, index: Int, tokens: [Int32], sampler: Sampler, gate: OutputGate) {
        self.group = group
        self.index = index
        self.tokens = tokens
        self.sampler = sampler
        self.gate = gate
    }

    /// A first choice of `request` on its own, whose events go nowhere (scheduler tests).
    public convenience init(request: EngineRequest, id: UInt64, gate: OutputGate) {
        let (_, continuation) = AsyncStream<EngineEvent>.makeStream()
        self.init(group: Group(id: id, request: request, continuation: continuation), index: 0, tokens: request.prompt,
                  sampler: Sampler(params: request.params), gate: gate)
    }

    /// Prompt positions the prefix cache supplied at admission.
    public var cachedPromptTokens: Int { group.cachedTokens }

    /// Decoding: everything but the newest token is in the cache.
    /// Batch-priority work (see `EngineRequest.Priority`).
    public var isBatch: Bool { group.request.priority == .batch }
    public var isDecoding: Bool { cache.map { $0.length == tokens.count - 1 && generated > 0 } ?? false }

    func fork(index: Int) -> Seq {
        var p = group.request.params
        if let seed = p.seed { p.seed = seed &+ UInt64(index) }
        let s = Seq(group: group, index: index, tokens: tokens, sampler: Sampler(params: p), gate: gate)
        s.cache = cache?.fork()
        s.forked = true
        return s
    }
}

/// Work the engine runs on its own thread between inference steps (see Engine.interleaved).
public protocol InterleavedWork: AnyObject, Sendable {
    /// Whether there is a piece to run now.
    var hasWork: Bool { get }
    /// Runs one bounded piece (a layer of a training step, say).
    func runPiece()
}
