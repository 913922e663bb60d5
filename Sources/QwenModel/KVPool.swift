import CQwenKernels
import QwenKernels

/// How the KV cache stores keys and values: f32; IEEE half floats (half the memory and half the
/// bytes attention reads; each value rounded to 11 significant bits); or Q8_0 blocks (34 bytes
/// per 32 values, 27% of f32; each value rounded to 1/254 of its block's largest magnitude, as
/// ggml's quantize_row_q8_0 rounds).
public enum KVCacheDType: String, Sendable, CaseIterable {
    case f32, f16, q8_0

    /// Bytes of one cache row (one position's keys, or values, of every kv head). Q8_0 gives
    /// each head whole blocks of 32 (its last one padded).
    public func rowBytes(kvHeads: Int, headDim: Int) -> Int {
        switch self {
        case .f32: return kvHeads * headDim * 4
        case .f16: return kvHeads * headDim * 2
        case .q8_0: return kvHeads * ((headDim + 31) / 32) * 34
        }
    }

    /// The kernel's number for this storage.
    var kernelType: Int32 {
        switch self {
        case .f32: return Int32(QWEN_KV_F32)
        case .f16: return Int32(QWEN_KV_F16)
        case .q8_0: return Int32(QWEN_KV_Q8_0)
        }
    }
}

/// Paged key/value memory shared by many sequences: fixed-size blocks of `blockSize`
/// positions, one storage array per layer for keys and one for values (each row
/// kvHeads·headDim floats). Blocks are reference-counted so sequences can share a
/// prompt prefix; a block that is shared is copied before it is written (copy-on-write).
/// Not thread-safe: the engine thread owns it.
public final class KVPool {
    public let layers: Int
    public let width: Int
    /// Bytes of one position's keys (or values) in a layer's storage.
    public let rowBytes: Int
    public let blockSize: Int
    public let dtype: KVCacheDType
    public private(set) var blockCount: Int
    /// A private pool (one sequence, the command line, tests, a draft model's) grows; the engine's is fixed.
    public let growable: Bool
    /// A growable pool stops growing here (a draft model's: bounded by the served cache's size).
    public let maxBlocks: Int
    /// Per layer, the storage (f32 values, or f16 bit patterns two to a float slot).
    var keys: [FloatBuffer]
    var values: [FloatBuffer]
    private(set) var refCount: [Int32]
    private var freeList: [Int32]
    /// Prefix-cache bookkeeping: the content hash of each full block, and which unreferenced
    /// blocks still hold reusable content (evicted oldest first when memory runs out).
    private(set) var blockHash: [UInt64?]
    /// What a published block holds, checked on every hit so that a hash collision (made on
    /// purpose or not) can never hand one sequence another's keys and values: its tokens,
    /// its cache salt, and the block before it (by id and allocation generation).
    private var blockContent: [PublishedBlock?]
    /// Bumped each time a block is allocated, so a parent reference to a reused block is stale.
    private var generation: [UInt32]
    private var cachedByHash: [UInt64: Int32] = [:]
    private var evictable: [Int32: UInt64] = [:]  // block -> last-use tick
    private var tick: UInt64 = 0

    /// How a block's content is hashed into the chain (replaceable so tests can force collisions).
    public typealias BlockHasher = @Sendable (_ previous: UInt64, _ tokens: ArraySlice<Int32>) -> UInt64
    let hasher: BlockHasher

    public init(config: QwenConfig, blocks: Int, blockSize: Int = 16, growable: Bool = false, maxBlocks: Int = .max,
                dtype: KVCacheDType = .f32, hasher: @escaping BlockHasher = KVCache.hash) {
        self.maxBlocks = max(maxBlocks, blocks, 1)
        self.hasher = hasher
        layers = config.layers
        width = config.kvHeads * config.headDim
        rowBytes = dtype.rowBytes(kvHeads: config.kvHeads, headDim: config.headDim)
        self.blockSize = blockSize
        self.dtype = dtype
        blockCount = max(blocks, 1)
        self.growable = growable
        let slots = Self.slots(blocks: max(blocks, 1), blockSize: blockSize, rowBytes: rowBytes)
        keys = (0..<config.layers).map { _ in FloatBuffer(count: slots) }
        values = (0..<config.layers).map { _ in FloatBuffer(count: slots) }
        refCount = Array(repeating: 0, count: max(blocks, 1))
        blockHash = Array(repeating: nil, count: max(blocks, 1))
        blockContent = Array(repeating: nil, count: max(blocks, 1))
        generation = Array(repeating: 0, count: max(blocks, 1))
        freeList = (0..<Int32(max(blocks, 1))).reversed()
    }

    /// Blocks that a new allocation can take: free ones plus cached ones nobody uses.
    public var availableBlocks: Int { freeList.count + evictable.count }
    /// Blocks referenced by a live sequence.
    public var usedBlocks: Int { blockCount - availableBlocks }
    public var cachedBlocks: Int { evictable.count }

    struct PublishedBlock {
        let tokens: [Int32]
        let salt: UInt64
        let parent: Int32
        let parentGeneration: UInt32
    }

    func allocate() -> Int32? {
        if let b = freeList.popLast() {
            refCount[Int(b)] = 1
            generation[Int(b)] &+= 1
            return b
        }
        if let (b, _) = evictable.min(by: { $0.value < $1.value }) {
            evictable[b] = nil
            if let h = blockHash[Int(b)] { cachedByHash[h] = nil }
            blockHash[Int(b)] = nil
            blockContent[Int(b)] = nil
            refCount[Int(b)] = 1
            generation[Int(b)] &+= 1
            return b
        }
        if growable && blockCount < maxBlocks {
            grow()
            return allocate()
        }
        return nil
    }

    /// Float-sized slots a layer's storage takes.
    static func slots(blocks: Int, blockSize: Int, rowBytes: Int) -> Int {
        (blocks * blockSize * rowBytes + 3) / 4
    }

    /// Bytes of one block of one layer's keys (or values).
    var blockBytes: Int { blockSize * rowBytes }

    private func grow() {
        let newCount = min(blockCount * 2, maxBlocks)
        for l in 0..<layers {
            let n = Self.slots(blocks: newCount, blockSize: blockSize, rowBytes: rowBytes)
            let k = FloatBuffer(count: n), v = FloatBuffer(count: n)
            UnsafeMutableRawPointer(k.pointer).copyMemory(from: keys[l].pointer, byteCount: blockCount * blockBytes)
            UnsafeMutableRawPointer(v.pointer).copyMemory(from: values[l].pointer, byteCount: blockCount * blockBytes)
            keys[l] = k
            values[l] = v
        }
        refCount += Array(repeating: 0, count: newCount - blockCount)
        blockHash += Array(repeating: nil, count: newCount - blockCount)
        blockContent += Array(repeating: nil, count: newCount - blockCount)
        generation += Array(repeating: 0, count: newCount - blockCount)
        freeList += (Int32(blockCount)..<Int32(newCount)).reversed()
        blockCount = newCount
    }

    func retain(_ b: Int32) {
        if refCount[Int(b)] == 0 { evictable[b] = nil }
        refCount[Int(b)] += 1
    }

    func release(_ b: Int32) {
        refCount[Int(b)] -= 1
        precondition(refCount[Int(b)] >= 0, "KV block released twice")
        if refCount[Int(b)] == 0 {
            if blockHash[Int(b)] != nil {
                tick += 1
                evictable[b] = tick
            } else {
                freeList.append(b)
            }
        }
    }

    /// Records that block `b` now holds `tokens` after block `parent` (-1: first block),
    /// identified by `hash`.
    func publish(_ b: Int32, hash: UInt64, tokens: ArraySlice<Int32>, salt: UInt64, parent: Int32) {
        guard blockHash[Int(b)] == nil, cachedByHash[hash] == nil else { return }
        blockHash[Int(b)] = hash
        blockContent[Int(b)] = PublishedBlock(tokens: Array(tokens), salt: salt, parent: parent,
                                              parentGeneration: parent >= 0 ? generation[Int(parent)] : 0)
        cachedByHash[hash] = b
    }

    /// Withdraws block `b` from the prefix cache before its positions are written again (a
    /// rolled-back draft filled it); blocks published after it stop matching it as their parent.
    func unpublish(_ b: Int32) {
        guard let h = blockHash[Int(b)] else { return }
        if cachedByHash[h] == b { cachedByHash[h] = nil }
        blockHash[Int(b)] = nil
        blockContent[Int(b)] = nil
        generation[Int(b)] &+= 1
    }

    /// Whether block `b` is what a prefix lookup would find for its hash (tests).
    public func isPublished(_ b: Int32) -> Bool {
        guard let h = blockHash[Int(b)] else { return false }
        return cachedByHash[h] == b
    }

    /// The cached block for `hash`, only if it really holds `tokens` after `parent` under `salt`.
    func lookup(_ hash: UInt64, tokens: ArraySlice<Int32>, salt: UInt64, parent: Int32) -> Int32? {
        guard let b = cachedByHash[hash], let c = blockContent[Int(b)] else { return nil }
        guard c.salt == salt, c.parent == parent, parent < 0 || c.parentGeneration == generation[Int(parent)],
              c.tokens.elementsEqual(tokens) else { return nil }
        return b
    }

    /// Copies block `src` into a fresh block (for copy-on-write); nil when memory is full.
    func copy(_ src: Int32) -> Int32? {
        guard let dst = allocate() else { return nil }
        let n = blockBytes
        for l in 0..<layers {
            (UnsafeMutableRawPointer(keys[l].pointer) + Int(dst) * n).copyMemory(from: UnsafeRawPointer(keys[l].pointer) + Int(src) * n, byteCount: n)
            (UnsafeMutableRawPointer(values[l].pointer) + Int(dst) * n).copyMemory(from: UnsafeRawPointer(values[l].pointer) + Int(src) * n, byteCount: n)
        }
        return dst
    }

    /// Drops every cached (unreferenced) block's content.
    public func clearPrefixCache() {
        for (b, _) in evictable {
            if let h = blockHash[Int(b)] { cachedByHash[h] = nil }
            blockHash[Int(b)] = nil
            blockContent[Int(b)] = nil
            freeList.append(b)
        }
        evictable.removeAll()
    }
}

/// One sequence's view of a KVPool: its block table and how many positions are filled.
public final class KVCache {
    public let pool: KVPool
    public private(set) var blocks: [Int32] = []
    /// Positions already written (and so visible to attention).
    public internal(set) var length = 0
    /// Token ids of the filled positions, for prefix hashing.
    var tokens: [Int32] = []
    /// Hash chain of the full blocks so far; `salt` separates caches (e.g. per adapter).
    var hashes: [UInt64] = []
    public let salt: UInt64

    public init(pool: KVPool, salt: UInt64 = 0) {
        self.pool = pool
        self.salt = salt
    }

    /// A sequence with a private, growable pool (the single-stream path).
    public convenience init(config: QwenConfig, capacity: Int = 256, dtype: KVCacheDType = .f32) {
        self.init(pool: KVPool(config: config, blocks: (capacity + 15) / 16, growable: true, dtype: dtype))
    }

    /// Blocks needed to hold `n` more positions.
    public func blocksNeeded(forAdding n: Int) -> Int {
        max(0, (length + n + pool.blockSize - 1) / pool.blockSize - blocks.count)
    }

    /// Makes room for `n` more positions: new blocks, and a private copy of a shared last
    /// block before it is written. Returns false (changing nothing) when the pool is full.
    public func reserve(_ n: Int) -> Bool {
        let bs = pool.blockSize
        let needNew = blocksNeeded(forAdding: n)
        let lastShared = length % bs != 0 && !blocks.isEmpty && pool.refCount[Int(blocks[blocks.count - 1])] > 1
        guard pool.availableBlocks >= needNew + (lastShared ? 1 : 0) || pool.growable else { return false }
        if lastShared {
            let old = blocks[blocks.count - 1]
            guard let copy = pool.copy(old) else { return false }
            pool.release(old)
            blocks[blocks.count - 1] = copy
        }
        for _ in 0..<needNew {
            guard let b = pool.allocate() else { return false }
            blocks.append(b)
        }
        return true
    }

    /// Records that `newTokens` were written at positions length..<length+n (room reserved
    /// before): they become visible to attention, and full blocks are published to the prefix cache.
    public func advance(_ newTokens: [Int32]) {
        precondition(length + newTokens.count <= blocks.count * pool.blockSize, "advance past the reserved blocks")
        tokens += newTokens
        length += newTokens.count
        let bs = pool.blockSize
        while hashes.count < length / bs {
            let i = hashes.count
            let h = pool.hasher(i == 0 ? salt : hashes[i - 1], tokens[(i * bs)..<((i + 1) * bs)])
            hashes.append(h)
            pool.publish(blocks[i], hash: h, tokens: tokens[(i * bs)..<((i + 1) * bs)], salt: salt, parent: i == 0 ? -1 : blocks[i - 1])
        }
    }

    /// Returns the blocks past the filled positions (room reserved for tokens that were not kept).
    public func releaseSpareBlocks() {
        let keep = (length + pool.blockSize - 1) / pool.blockSize
        guard blocks.count > keep else { return }
        for b in blocks[keep...] { pool.release(b) }
        blocks.removeSubrange(keep...)
    }

    /// Forgets positions `n..<length` (tokens a draft model proposed that were not kept): blocks
    /// published with any of them leave the prefix cache, and blocks past `n` go back to the pool.
    public func rollback(to n: Int) {
        precondition(n >= 0 && n <= length, "rollback past the filled positions")
        guard n < length else { return }
        let full = n / pool.blockSize
        for i in full..<hashes.count { pool.unpublish(blocks[i]) }
        if hashes.count > full { hashes.removeSubrange(full...) }
        tokens.removeSubrange(n...)
        length = n
        releaseSpareBlocks()
    }

    /// The token ids of the filled positions.
    public var filledTokens: [Int32] { tokens }

    /// Reuses cached blocks for the longest block-aligned prefix of `prompt` (at most
    /// `prompt.count - 1` positions, so at least one token is left to compute).
    /// Returns how many positions were reused. Only for an empty cache.
    public func adoptPrefix(of prompt: [Int32]) -> Int {
        precondition(length == 0 && blocks.isEmpty, "adoptPrefix on a used cache")
        let bs = pool.blockSize
        var h = salt
        var i = 0
        while (i + 1) * bs <= prompt.count - 1 {
            h = pool.hasher(h, prompt[(i * bs)..<((i + 1) * bs)])
            guard let b = pool.lookup(h, tokens: prompt[(i * bs)..<((i + 1) * bs)], salt: salt, parent: i == 0 ? -1 : blocks[i - 1]) else { break }
            pool.retain(b)
            blocks.append(b)
            hashes.append(h)
            i += 1
        }
        length = i * bs
        tokens = Array(prompt[0..<length])
        return length
    }

    /// Shares this sequence's filled blocks with a new cache (for n > 1 choices).
    public func fork() -> KVCache {
        let c = KVCache(pool: pool, salt: salt)
        for b in blocks { pool.retain(b) }
        c.blocks = blocks
        c.length = length
        c.tokens = tokens
        c.hashes = hashes
        return c
    }

    /// Returns every block to the pool. The cache is empty afterwards.
    public func free() {
        for b in blocks { pool.release(b) }
        blocks = []
        hashes = []
        tokens = []
        length = 0
    }

    deinit { for b in blocks { pool.release(b) } }

    @Sendable public static func hash(previous: UInt64, _ toks: ArraySlice<Int32>) -> UInt64 {
        // FNV-1a over the previous hash and the block's tokens, then a final mix.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ previous
        for t in toks {
            h = (h ^ UInt64(UInt32(bitPattern: t))) &* 0x0000_0100_0000_01B3
        }
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        return h
    }
}
