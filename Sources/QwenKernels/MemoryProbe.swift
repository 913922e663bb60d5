import CQwenKernels
import Foundation

/// How fast this machine reads memory: the ceiling for single-stream generation, which reads
/// every weight once per token (benchmarks only).
public enum MemoryProbe {
    /// GB/s reading 1 GiB with one thread per core: the median of 5 passes, after one that
    /// faults the pages in.
    public static func readGBPerSecond() -> Double {
        let n = 1 << 28
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buf.deallocate() }
        buf.initialize(repeating: 1, count: n)
        let threads = max(1, ProcessInfo.processInfo.activeProcessorCount)
        var times: [Double] = []
        for _ in 0..<6 {
            let t = Date()
            DispatchQueue.concurrentPerform(iterations: threads) { k in
                let lo = n / threads * k, hi = k == threads - 1 ? n : n / threads * (k + 1)
                _ = qwen_read_sum(buf + lo, hi - lo)
            }
            times.append(Date().timeIntervalSince(t))
        }
        return Double(n * 4) / times.dropFirst().sorted()[2] / 1e9
    }
}
