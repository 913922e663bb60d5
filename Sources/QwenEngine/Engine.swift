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
        public init() {}
    }

    /// What one step did, for metrics.
    public struct StepStats: Sendable {
        public let sequences: Int
        public let tokens: Int
        public let seconds: Double
    }

    public struct Snapshot: Sendable {
        public let running: Int
        public let waiting: Int
        public let kvBlocksUsed: Int
        public let kvBlocksFree: Int
        public let kvBlocksCached: Int
        public let kvBlocksTotal: Int
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

    // Owned by the engine thread.
    private var waiting: [Seq] = []
    private var running: [Seq] = []
    private var admissionCounter = 0

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

    public init(model: QwenModel, tokenizer: Tokenizer, config: Config = Config()) {
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        pool = KVPool(config: model.config, blocks: config.kvBlocks, blockSize: config.blockSize, dtype: config.kvDType)
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
            while inbox.isEmpty && running.isEmpty && waiting.isEmpty && !stopRequested {
                if interleaved?.hasWork == true {
                    // Nothing to serve: the interleaved work takes the engine, a piece at a time
                    // so that an arriving request waits at most one piece.
                    cond.unlock()
                    interleaved?.runPiece()
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
            for g in arrived { waiting.append(g.makeFirstSequence(pool: pool)) }
            if stop {
                for s in running + waiting { finish(s, .cancelled) }
                running.removeAll()
                waiting.removeAll()
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
            let t0 = DispatchTime.now()
            work.runPiece()
            credit -= Double(DispatchTime.now().uptimeNanoseconds - t0.uptimeNanoseconds) / 1e9
        }
    }

    /// Requests that have heard nothing for a second get a heartbeat.
    private func heartbeats() {
        let now = DispatchTime.now().uptimeNanoseconds
        var seen = Set<ObjectIdentifier>()
        for s in waiting + running where seen.insert(ObjectIdentifier(s.group)).inserted {
            if now &- s.group.lastEmit > 1_000_000_000 { s.group.emit(.heartbeat) }
        }
    }

    private func publishSnapshot() {
        cond.lock()
        waitingCount = waiting.count + inbox.count
        snapshotValue = Snapshot(running: running.count, waiting: waitingCount, kvBlocksUsed: pool.usedBlocks,
                                 kvBlocksFree: pool.availableBlocks - pool.cachedBlocks, kvBlocksCached: pool.cachedBlocks,
                                 kvBlocksTotal: pool.blockCount)
        cond.unlock()
    }

    /// One iteration. Returns nil when there was nothing to run.
    private func step() -> StepStats? {
        let start = DispatchTime.now()
        // Retire cancelled sequences (client gone): their blocks are free within this step.
        for s in running + waiting where s.group.isCancelled(s.index) { finish(s, .cancelled) }
        running.removeAll { $0.finished }
        waiting.removeAll { $0.finished }

        admit()

        // Decode rows first (one token each), then prompt chunks in admission order.
        var budget = config.stepTokens
        var batch: [(Seq, Int)] = []
        for s in running where s.isDecoding {
            batch.append((s, 1))
            budget -= 1
        }
        for s in running where !s.isDecoding && budget > 0 {
            let n = min(budget, s.tokens.count - s.cache!.length)
            batch.append((s, n))
            budget -= n
        }
        // Reserve KV memory for every row; preempt the youngest sequences when it runs out.
        var i = 0
        while i < batch.count {
            let (s, n) = batch[i]
            if s.finished || s.cache == nil { batch.remove(at: i); continue }
            if s.cache!.reserve(n) { i += 1; continue }
            // Out of memory: the newest sequence gives its memory back (as vLLM does), which
            // is this one when it is the newest, so old requests are never pushed out by new ones.
            let holders = running.filter { !$0.finished && $0.cache != nil }
            guard holders.count > 1, let victim = holders.max(by: { $0.admittedAt < $1.admittedAt }) else {
                // Alone and still out of memory: it cannot grow any more.
                finish(s, .length)
                batch.remove(at: i)
                continue
            }
            preempt(victim)
            if victim === s {
                batch.remove(at: i)
                continue
            }
            if let j = batch.firstIndex(where: { $0.0 === victim }), j < i { i -= 1 }
            batch.removeAll { $0.0 === victim }
        }
        running.removeAll { $0.finished || $0.cache == nil }
        guard !batch.isEmpty else { return nil }
        // Rows of one adapter side by side, so each adapter's update is one product per projection.
        if batch.contains(where: { $0.0.group.request.adapter != nil }) {
            batch = batch.enumerated().sorted {
                let a = $0.element.0.group.request.adapter?.id ?? 0, b = $1.element.0.group.request.adapter?.id ?? 0
                return a != b ? a < b : $0.offset < $1.offset
            }.map(\.element)
        }

        let items = batch.map { (s, n) -> QwenModel.Item in
            let from = s.cache!.length
            let completes = from + n == s.tokens.count
            return QwenModel.Item(cache: s.cache!, tokens: Array(s.tokens[from..<(from + n)]), logits: completes ? .last : .none,
                                  adapter: s.group.request.adapter)
        }
        let logits: [[Float]]
        do {
            logits = try model.forward(items)
        } catch {
            for (s, _) in batch { s.group.fail("\(error)"); finish(s, .cancelled) }
            running.removeAll { $0.finished }
            return nil
        }
        var spawned: [Seq] = []
        for (k, (s, _)) in batch.enumerated() where !logits[k].isEmpty {
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
        running += spawned
        running.removeAll { $0.finished }
        let tokens = batch.reduce(0) { $0 + $1.1 }
        let secs = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return StepStats(sequences: batch.count, tokens: tokens, seconds: secs)
    }

    private func admit() {
        while let s = waiting.first, running.count < config.maxRunning {
            if s.cache == nil {
                let c = KVCache(pool: pool, salt: s.group.request.effectiveSalt)
                if s.tokens.count == s.group.request.prompt.count && s.index == 0 {
                    s.group.cachedTokens = c.adoptPrefix(of: s.tokens)
                }
                s.cache = c
            }
            // Room for the whole known sequence plus the first new token, so an admitted
            // request is not preempted straight away.
            let need = s.cache!.blocksNeeded(forAdding: s.tokens.count - s.cache!.length + 1)
            // (Available blocks already count the prefix cache's unused ones: evicting it gains nothing.)
            if need > pool.availableBlocks {
                guard running.isEmpty else { break }
                // Nothing will free memory: this request can never fit.
                s.cache!.free()
                s.cache = nil
                finish(s, .length)
                waiting.removeFirst()
                continue
            }
            waiting.removeFirst()
            admissionCounter += 1
            s.admittedAt = admissionCounter
            running.append(s)
        }
    }

    /// Frees a sequence's memory and puts it back at the head of the queue; it recomputes
    /// its prompt and generated tokens when it is admitted again.
    private func preempt(_ s: Seq) {
        s.cache?.free()
        s.cache = nil
        running.removeAll { $0 === s }
        waiting.insert(s, at: 0)
    }

    private func sample(_ s: Seq, _ logits: [Float]) {
        var l = logits
        s.sampler.adjust(&l, history: Array(s.tokens[s.group.request.prompt.count...]))
        let constraint = s.group.request.constraint
        if let constraint {
            if let state = s.grammarState {
                // Structured output: only tokens the grammar can take (and the end, once it may end).
                // Log-probabilities below stay those of the raw distribution.
                let m = constraint.mask(state)
                Self.apply(m, to: &l, endIds: constraint.vocabulary.endIds)
            } else if let gate = s.group.request.reasoningGate {
                // Reasoning first: the block must open, then may say anything but end.
                if s.reasoningOpen {
                    for e in constraint.vocabulary.endIds where Int(e) < l.count { l[Int(e)] = -.infinity }
                } else {
                    let keep = l[Int(gate.open)]
                    for i in l.indices { l[i] = -.infinity }
                    l[Int(gate.open)] = keep.isFinite ? keep : 0
                }
            }
        }
        // NaN or +infinity (a broken adapter, an overflow): this sequence ends with an error
        // of its own; its batch-mates, whose rows are independent, go on.
        guard let tok = s.sampler.sampleIfFinite(l) else {
            s.group.fail("the model produced non-finite logits for this sequence; it was stopped")
            finish(s, .cancelled)
            return
        }
        let r = s.group.request
        if ((!r.ignoreEOS || constraint != nil) && tokenizer.eosTokenIds.contains(tok)) || r.stopTokenIds.contains(tok) {
            finish(s, .stop)
            return
        }
        var grammarDone = false
        if constraint != nil, s.grammarState == nil, let gate = r.reasoningGate {
            if tok == gate.open { s.reasoningOpen = true }
            if tok == gate.close { s.grammarState = constraint?.matcher.start }
        } else if let constraint, let state = s.grammarState {
            guard let next = constraint.advance(state, bytes: tokenizer.tokenBytes[Int(tok)]) else {
                // Unreachable while masks are right; a sequence is never left to run unconstrained.
                s.group.fail("structured output: the grammar refused token \(tok); the sequence was stopped")
                finish(s, .cancelled)
                return
            }
            s.grammarState = next
            grammarDone = !next.canContinue
        }
        var lp: Float? = nil
        var top: [TokenLogprob] = []
        if let k = r.logprobs { (lp, top) = Logprobs.compute(logits, chosen: tok, top: k) }
        s.tokens.append(tok)
        s.generated += 1
        s.group.emit(.token(index: s.index, TokenOutput(token: tok, logprob: lp, top: top)))
        if grammarDone {
            // The output is complete: nothing else may follow.
            finish(s, .stop)
        } else if s.generated >= r.maxTokens || s.tokens.count >= maxSequenceTokens {
            finish(s, .length)
        }
    }

    /// Masks `logits` to the tokens `m` allows (−∞ elsewhere).
    static func apply(_ m: TokenMask, to logits: inout [Float], endIds: [Int32]) {
        var saved: [(Int, Float)] = []
        if m.allowEnd { for e in endIds where Int(e) < logits.count { saved.append((Int(e), logits[Int(e)])) } }
        logits.withUnsafeMutableBufferPointer { l in
            m.bits.withUnsafeBufferPointer { bits in
                let n = l.count
                var w = 0
                while w * 64 < n {
                    let word = bits[w]
                    let end = min(n, w * 64 + 64)
                    if word == 0 {
                        for i in (w * 64)..<end { l[i] = -.infinity }
                    } else if word != .max {
                        for i in (w * 64)..<end where word >> UInt64(i & 63) & 1 == 0 { l[i] = -.infinity }
                    }
                    w += 1
                }
            }
        }
        for (i, v) in saved { logits[i] = v }
    }

    private func finish(_ s: Seq, _ reason: FinishReason) {
        guard !s.finished else { return }
        s.finished = true
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

    func makeFirstSequence(pool: KVPool) -> Seq {
        Seq(group: self, index: 0, tokens: request.prompt, sampler: Sampler(params: request.params))
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
            continuation.yield(.done(promptTokens: request.prompt.count, completionTokens: completionTokens, cachedTokens: cachedTokens))
            continuation.finish()
        }
    }
}

/// One choice of a request as the engine runs it.
final class Seq {
    let group: Group
    let index: Int
    /// Prompt and generated tokens; the cache holds the first `cache.length` of them.
    var tokens: [Int32]
    var generated = 0
    var sampler: Sampler
    /// Where the output stands in the request's grammar (structured outputs); nil while a
    /// reasoning block comes first (`reasoningOpen` once it has opened).
    var grammarState: Matcher.State?
    var reasoningOpen = false
    var cache: KVCache?
    var finished = false
    var forked = false
    var admittedAt = 0

    init(group: Group, index: Int, tokens: [Int32], sampler: Sampler) {
        self.group = group
        self.index = index
        self.tokens = tokens
        self.sampler = sampler
        if let gate = group.request.reasoningGate {
            reasoningOpen = gate.inside
        } else {
            grammarState = group.request.constraint?.matcher.start
        }
    }

    /// Decoding: everything but the newest token is in the cache.
    var isDecoding: Bool { cache.map { $0.length == tokens.count - 1 && generated > 0 } ?? false }

    func fork(index: Int) -> Seq {
        var p = group.request.params
        if let seed = p.seed { p.seed = seed &+ UInt64(index) }
        let s = Seq(group: group, index: index, tokens: tokens, sampler: Sampler(params: p))
        s.grammarState = grammarState
        s.reasoningOpen = reasoningOpen
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
