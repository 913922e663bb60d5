import CQwenKernels
import Dispatch
import Foundation
import QwenKernels

/// Causal attention for a batch of rows from different sequences, each row against its
/// own sequence's paged keys and values up to and including its position.
enum Attention {
    static let workers = max(1, min(8, ProcessInfo.processInfo.activeProcessorCount))

    static func rows(q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, rows t: Int, rowItem: [Int], rowPos: [Int],
                     items: [QwenModel.Item], layer: Int, config c: QwenConfig,
                     scratch: UnsafeMutablePointer<Float>, scratchPerWorker: Int, workers: Int) {
        let qw = c.heads * c.headDim
        let scale = 1 / Float(c.headDim).squareRoot()
        let chunk = (t + workers - 1) / workers
        // Block tables as contiguous Int32 arrays, one per item, for the C kernel.
        let tables: [[Int32]] = items.map(\.cache.blocks)
        let kbases = items.map { UnsafePointer($0.cache.pool.keys[layer].pointer) }
        let vbases = items.map { UnsafePointer($0.cache.pool.values[layer].pointer) }
        let bs = Int32(items.first?.cache.pool.blockSize ?? 16)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let lo = w * chunk, hi = min(t, lo + chunk)
            guard lo < hi else { return }
            let buf = scratch + w * scratchPerWorker
            for r in lo..<hi {
                let k = rowItem[r]
                tables[k].withUnsafeBufferPointer { bt in
                    qwen_attend_paged(q + r * qw, Int32(c.heads), Int32(c.kvHeads), Int32(c.headDim), kbases[k], vbases[k],
                                      bt.baseAddress, bs, Int32(rowPos[r] + 1), scale, out + r * qw, buf)
                }
            }
        }
    }
}
