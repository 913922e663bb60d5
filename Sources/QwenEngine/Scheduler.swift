import QwenModel

/// The engine's scheduling policy, apart from its loop (as nano-vllm's scheduler and vLLM v1's
/// `schedule()` are): which waiting sequences are admitted, how the step's token budget is shared
/// (decode rows first, each with the drafts it proposes, then prompt chunks in admission order),
/// who gives memory back when the KV cache runs out (the newest sequence, as vLLM does), and the
/// order the rows run in. It owns the waiting queue and the running set; KV memory is reserved
/// through each sequence's cache, whose pool is the one owner of block bookkeeping. It needs no
/// model and emits nothing (public so it is tested alone).
public final class Scheduler {
    public struct Config {
        public var maxRunning: Int
        public var stepTokens: Int
        /// What an extra row costs, as a share of a one-row step (decoding reads every weight
        /// once per step, whatever its rows).
        public var rowCost = 0.25
        /// How much longer batch-priority rows may make a step that interactive rows run in.
        public var batchSlack = 0.2
        public init(maxRunning: Int, stepTokens: Int) {
            self.maxRunning = maxRunning
            self.stepTokens = stepTokens
        }

        /// Rows (decode rows, drafts, prompt tokens) batch-priority sequences may take in a step
        /// while `interactive` interactive sequences are active: as many as keep the step within
        /// `1 + batchSlack` of its cost without them, and at least one, so a batch always advances.
        public func batchRows(interactive k: Int) -> Int {
            guard k > 0 else { return Int.max }
            let base = 1 + rowCost * Double(k - 1)
            return max(1, Int((batchSlack * base / rowCost).rounded(.down)))
        }
    }

    /// One step: the rows to run, in order (a sequence and its token count: a decode row with its
    /// drafts, or a prompt chunk), and sequences that can never fit in memory (the engine ends
    /// them with `length`).
    public struct Plan {
        public var rows: [(seq: Seq, tokens: Int)] = []
        public var outOfMemory: [Seq] = []
    }

    public let config: Config
    public let pool: KVPool
    public private(set) var waiting: [Seq] = []
    public private(set) var running: [Seq] = []
    private var admissionCounter = 0

    public init(config: Config, pool: KVPool) {
        self.config = config
        self.pool = pool
    }

    public var isIdle: Bool { waiting.isEmpty && running.isEmpty }

    public func enqueue(_ s: Seq) { waiting.append(s) }

    /// Sequences split off a running one (the other choices of `n > 1`), already holding memory.
    func addRunning(_ seqs: [Seq]) { running += seqs }

    /// Drops finished sequences (the engine frees their memory when it finishes them).
    func removeFinished() {
        running.removeAll { $0.finished }
        waiting.removeAll { $0.finished }
    }

    /// Every sequence, for shutdown; the scheduler is empty afterwards.
    func drain() -> [Seq] {
        defer {
            running.removeAll()
            waiting.removeAll()
        }
        return running + waiting
    }

    /// Plans one step. `propose(s, decoding, room)` returns the drafts a decoding sequence offers,
    /// given how many sequences decode this step and how many rows it may take.
    public func schedule(propose: (Seq, Int, Int) -> [Int32]) -> Plan {
        var plan = Plan()
        admit(&plan)
        var budget = config.stepTokens
        // Interactive rows first; batch rows within what they may add while interactive ones run
        // (the others wait, holding their memory, for a step with room).
        var batchBudget = batchRowLimit
        let decoding = running.filter { $0.isDecoding && !$0.isBatch } + running.filter { $0.isDecoding && $0.isBatch }
        var rowsLeft = decoding.count
        for s in decoding {
            rowsLeft -= 1
            s.draft = []
            if s.isBatch {
                guard batchBudget > 0, budget > 0 else { continue }
                batchBudget -= 1
            }
            // Drafts never take a row another decoding sequence needs.
            let room = max(0, budget - 1 - rowsLeft)
            s.draft = propose(s, decoding.count, s.isBatch ? min(room, batchBudget) : room)
            if s.isBatch { batchBudget -= s.draft.count }
            plan.rows.append((s, 1 + s.draft.count))
            budget -= 1 + s.draft.count
        }
        for s in running.filter({ !$0.isBatch }) + running.filter(\.isBatch) where !s.isDecoding && budget > 0 {
            var n = min(budget, s.tokens.count - s.cache!.length)
            if s.isBatch {
                n = min(n, batchBudget)
                guard n > 0 else { continue }
                batchBudget -= n
            }
            plan.rows.append((s, n))
            budget -= n
        }
        reserve(&plan)
        running.removeAll { $0.cache == nil }
        // Rows of one adapter side by side, so each adapter's update is one product per projection.
        if plan.rows.contains(where: { $0.seq.group.request.adapter != nil }) {
            plan.rows = plan.rows.enumerated().sorted {
                let a = $0.element.seq.group.request.adapter?.id ?? 0, b = $1.element.seq.group.request.adapter?.id ?? 0
                return a != b ? a < b : $0.offset < $1.offset
            }.map(\.element)
        }
        return plan
    }

    /// Interactive sequences running or waiting.
    private var interactiveActive: Int { running.count(where: { !$0.isBatch }) + waiting.count(where: { !$0.isBatch }) }

    /// Rows batch sequences may take this step (unlimited with no interactive sequence active).
    private var batchRowLimit: Int { config.batchRows(interactive: interactiveActive) }

    /// The next sequence to admit: the first interactive one waiting, else the first batch one
    /// while batch sequences may grow (under interactive load, no more of them than rows they may take).
    private var nextToAdmit: Int? {
        if let i = waiting.firstIndex(where: { !$0.isBatch }) { return i }
        guard let i = waiting.firstIndex(where: \.isBatch) else { return nil }
        return running.count(where: \.isBatch) < batchRowLimit ? i : nil
    }

    /// The batch sequence admitted last: the first to give its slot or memory to interactive work.
    private var newestBatch: Seq? { running.filter(\.isBatch).max { $0.admittedAt < $1.admittedAt } }

    /// Admits waiting sequences (interactive ones first) while there is room for their known
    /// tokens and one more; an interactive one short of a slot or of memory takes it from the
    /// newest running batch sequence.
    private func admit(_ plan: inout Plan) {
        while let idx = nextToAdmit {
            let s = waiting[idx]
            if running.count >= config.maxRunning {
                // Every slot is taken: an interactive request takes a batch sequence's.
                guard !s.isBatch, let victim = newestBatch else { break }
                preempt(victim)
                continue
            }
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
            if need > pool.availableBlocks, !s.isBatch, let victim = newestBatch {
                preempt(victim)
                continue
            }
            if need > pool.availableBlocks {
                guard running.isEmpty else { break }
                // Nothing will free memory: this request can never fit.
                s.cache!.free()
                s.cache = nil
                waiting.remove(at: idx)
                plan.outOfMemory.append(s)
                continue
            }
            waiting.remove(at: idx)
            admissionCounter += 1
            s.admittedAt = admissionCounter
            running.append(s)
        }
    }

    /// Reserves KV memory for every planned row. When it runs out, drafts go first, then the newest
    /// running sequence gives its memory back (so old requests are never pushed out by new ones);
    /// a sequence alone that still cannot grow is out of memory.
    private func reserve(_ plan: inout Plan) {
        var i = 0
        while i < plan.rows.count {
            let (s, n) = plan.rows[i]
            guard let cache = s.cache else {
                plan.rows.remove(at: i)
                continue
            }
            if cache.reserve(n) { i += 1; continue }
            if !s.draft.isEmpty {
                s.draft = []
                plan.rows[i].tokens = 1
                continue
            }
            let holders = running.filter { $0.cache != nil }
            // Batch sequences give memory back before any interactive one does.
            let newest = { (a: Seq, b: Seq) in a.admittedAt < b.admittedAt }
            guard holders.count > 1, let victim = holders.filter(\.isBatch).max(by: newest) ?? holders.max(by: newest) else {
                running.removeAll { $0 === s }
                plan.outOfMemory.append(s)
                plan.rows.remove(at: i)
                continue
            }
            preempt(victim)
            if victim === s {
                plan.rows.remove(at: i)
                continue
            }
            if let j = plan.rows.firstIndex(where: { $0.seq === victim }), j < i { i -= 1 }
            plan.rows.removeAll { $0.seq === victim }
        }
    }

    /// Frees a sequence's memory and puts it back at the head of the queue; it recomputes its
    /// prompt and generated tokens when it is admitted again.
    private func preempt(_ s: Seq) {
        s.cache?.free()
        s.cache = nil
        s.draft = []
        running.removeAll { $0 === s }
        waiting.insert(s, at: 0)
    }
}
