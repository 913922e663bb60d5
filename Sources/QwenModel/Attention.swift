import CQwenKernels
import Dispatch
import Foundation
import QwenKernels

/// Where the rows of a forward pass come from: the sequence each row belongs to and its
/// position in it. Serving and training describe their batches this way; the layers see
/// nothing else of the batch.
public struct BatchLayout {
    /// Row → index of its sequence in the batch.
    public let rowItem: [Int]
    /// Row → its position in its sequence (what RoPE rotates by, and how far it attends).
    public let rowPos: [Int]
    public var rows: Int { rowItem.count }
    /// The longest context any row attends over.
    public let maxContext: Int
    /// Rows of one sequence at consecutive positions (a prompt chunk), cut to at most
    /// `Attention.blockRows`: what attention takes together. Found once per forward.
    let runs: [Range<Int>]

    public init(rowItem: [Int], rowPos: [Int]) {
        precondition(rowItem.count == rowPos.count)
        self.rowItem = rowItem
        self.rowPos = rowPos
        maxContext = (rowPos.max() ?? 0) + 1
        var runs: [Range<Int>] = []
        var start = 0
        for r in rowItem.indices {
            let next = r + 1
            let continues = next < rowItem.count && rowItem[next] == rowItem[r] && rowPos[next] == rowPos[r] + 1
            if !continues || next - start == Attention.blockRows {
                runs.append(start..<next)
                start = next
            }
        }
        self.runs = runs
    }

    /// Sequences of the given lengths stacked one after another, each from position 0.
    public init(lengths: [Int]) {
        var item: [Int] = [], pos: [Int] = []
        for (k, n) in lengths.enumerated() {
            item.append(contentsOf: repeatElement(k, count: n))
            pos.append(contentsOf: 0..<n)
        }
        self.init(rowItem: item, rowPos: pos)
    }
}

/// The keys and values attention reads, one layer at a time: the paged KV cache when
/// serving, each sequence's own freshly computed keys when training.
protocol KeyValueAccess {
    /// Keeps the keys and values of the batch's rows (`k`, `v`: [rows × kv width]) for `layer`.
    func store(layer: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, layout: BatchLayout)
    /// Per sequence of the batch: base pointers of its keys and values for `layer`, its block
    /// table and the block size (slot of position p = table[p / size] * size + p % size), and
    /// how they are stored (QWEN_KV_F32, QWEN_KV_F16 or QWEN_KV_Q8_0).
    func sources(layer: Int) -> (keys: [UnsafeRawPointer], values: [UnsafeRawPointer], tables: [[Int32]], blockSize: Int, kvType: Int32)
}

/// Serving: keys and values live in each sequence's pages of the KV pool.
struct PagedKeyValues: KeyValueAccess {
    let caches: [KVCache]
    let width: Int
    let kvHeads: Int

    /// One row's heads (`heads` × `headDim` values) as Q8_0 blocks, each head from a block
    /// boundary: a head width that is not a multiple of 32 is padded with zeros, which leave
    /// its last block's scale as it is (the padding is never read).
    static func quantizeHeads(_ x: UnsafePointer<Float>, heads: Int, headDim: Int, into out: UnsafeMutableRawPointer) {
        if headDim % 32 == 0 {
            qwen_quantize_rows(Int32(QWEN_Q8_0), x, 1, Int32(heads * headDim), out)
            return
        }
        let padded = (headDim + 31) / 32 * 32
        withUnsafeTemporaryAllocation(of: Float.self, capacity: padded) { tmp in
            tmp.initialize(repeating: 0)
            for h in 0..<heads {
                _ = tmp.update(fromContentsOf: UnsafeBufferPointer(start: x + h * headDim, count: headDim))
                qwen_quantize_rows(Int32(QWEN_Q8_0), tmp.baseAddress!, 1, Int32(padded), out + h * (padded / 32 * 34))
            }
        }
    }

    func store(layer l: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, layout: BatchLayout) {
        for r in 0..<layout.rows {
            let pos = layout.rowPos[r]
            let cache = caches[layout.rowItem[r]]
            let bs = cache.pool.blockSize
            let slot = (Int(cache.blocks[pos / bs]) * bs + pos % bs) * width
            switch cache.pool.dtype {
            case .f32:
                (cache.pool.keys[l].pointer + slot).update(from: k + r * width, count: width)
                (cache.pool.values[l].pointer + slot).update(from: v + r * width, count: width)
            case .f16:
                let kd = UnsafeMutableRawPointer(cache.pool.keys[l].pointer).assumingMemoryBound(to: UInt16.self)
                let vd = UnsafeMutableRawPointer(cache.pool.values[l].pointer).assumingMemoryBound(to: UInt16.self)
                qwen_f32_to_f16(k + r * width, kd + slot, Int32(width))
                qwen_f32_to_f16(v + r * width, vd + slot, Int32(width))
            case .q8_0:
                let byte = slot / width * cache.pool.rowBytes
                Self.quantizeHeads(k + r * width, heads: kvHeads, headDim: width / kvHeads,
                                   into: UnsafeMutableRawPointer(cache.pool.keys[l].pointer) + byte)
                Self.quantizeHeads(v + r * width, heads: kvHeads, headDim: width / kvHeads,
                                   into: UnsafeMutableRawPointer(cache.pool.values[l].pointer) + byte)
            }
        }
    }

    func sources(layer l: Int) -> (keys: [UnsafeRawPointer], values: [UnsafeRawPointer], tables: [[Int32]], blockSize: Int, kvType: Int32) {
        (caches.map { UnsafeRawPointer($0.pool.keys[l].pointer) }, caches.map { UnsafeRawPointer($0.pool.values[l].pointer) },
         caches.map(\.blocks), caches.first?.pool.blockSize ?? 16, caches.first?.pool.dtype.kernelType ?? Int32(QWEN_KV_F32))
    }
}

/// Training: whole sequences stacked row after row, so a sequence's keys are the rows of the
/// layer's own key buffer from its first row on (read in order through an identity table).
struct StackedKeyValues: KeyValueAccess {
    /// Per layer, the key and value buffers ([rows × kv width]) the layer writes its keys into.
    let keys: (Int) -> UnsafePointer<Float>
    let values: (Int) -> UnsafePointer<Float>
    /// First row of each sequence.
    let starts: [Int]
    let width: Int
    let identity: [Int32]
    static let blockSize = 16

    init(lengths: [Int], width: Int, keys: @escaping (Int) -> UnsafePointer<Float>, values: @escaping (Int) -> UnsafePointer<Float>) {
        var s: [Int] = [], r = 0
        for n in lengths {
            s.append(r)
            r += n
        }
        starts = s
        self.width = width
        self.keys = keys
        self.values = values
        identity = (0..<Int32(((lengths.max() ?? 0) + Self.blockSize - 1) / Self.blockSize)).map { $0 }
    }

    func store(layer: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, layout: BatchLayout) {}

    func sources(layer l: Int) -> (keys: [UnsafeRawPointer], values: [UnsafeRawPointer], tables: [[Int32]], blockSize: Int, kvType: Int32) {
        let k = keys(l), v = values(l)
        return (starts.map { UnsafeRawPointer(k + $0 * width) }, starts.map { UnsafeRawPointer(v + $0 * width) }, starts.map { _ in identity },
                Self.blockSize, Int32(QWEN_KV_F32))
    }
}

/// Causal attention for a batch of rows from different sequences, each row against its
/// own sequence's keys and values up to and including its position. A sequence's rows at
/// consecutive positions (a prompt chunk, `BatchLayout.runs`) are taken `blockRows` at a time, reading each key
/// and value once per block; a row's result is the same whatever it is computed with.
enum Attention {
    static let workers = max(1, min(8, ProcessInfo.processInfo.activeProcessorCount))
    static let blockRows = 16

    /// Scratch floats a worker needs for `layout` (qwen_attend_paged_rows's).
    static func scratchPerWorker(_ layout: BatchLayout, group: Int, headDim: Int) -> Int {
        group * min(blockRows, layout.rows) * layout.maxContext + 80 * headDim
    }

    static func rows(q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, layout: BatchLayout,
                     kv: KeyValueAccess, layer: Int, config c: QwenConfig,
                     scratch: UnsafeMutablePointer<Float>, scratchPerWorker: Int, workers: Int) {
        let qw = c.heads * c.headDim
        let scale = 1 / Float(c.headDim).squareRoot()
        let (kbases, vbases, tables, blockSize, kvType) = kv.sources(layer: layer)
        let bs = Int32(blockSize)
        let runs = layout.runs
        // Fewer blocks than threads (decoding one or a few sequences): each block's kv heads are
        // spread over the threads too, so a long context is read by every core.
        let split = runs.count < workers ? c.kvHeads : 1
        let items = runs.count * split
        // Later blocks see more keys: threads take items in turn, not in contiguous ranges.
        DispatchQueue.concurrentPerform(iterations: min(workers, items)) { w in
            let buf = scratch + w * scratchPerWorker
            for item in stride(from: w, to: items, by: workers) {
                let run = runs[item / split], g = item % split
                let (g0, g1) = split == 1 ? (0, c.kvHeads) : (g, g + 1)
                let r = run.lowerBound, k = layout.rowItem[r]
                tables[k].withUnsafeBufferPointer { bt in
                    qwen_attend_paged_rows(q + r * qw, Int32(qw), Int32(run.count), Int32(layout.rowPos[r] + 1), Int32(c.heads),
                                           Int32(c.kvHeads), Int32(c.headDim), kbases[k], vbases[k], bt.baseAddress, bs, scale,
                                           out + r * qw, buf, Int32(g0), Int32(g1), kvType)
                }
            }
        }
    }
}
