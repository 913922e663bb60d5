import CQwenKernels
import Foundation

/// How fast this machine reads memory: the ceiling for single-stream generation, which reads
/// every weight once per token (benchmarks only).
public enum MemoryProbe {
    /// This process's peak resident memory (VmHWM), in bytes. Not getrusage's ru_maxrss: on
    /// Linux that carries over from the parent across fork and exec, so a large parent (a
    /// benchmark script holding a model) would show up as this process's peak.
    public static func peakResidentBytes() -> Int { procValue("/proc/self/status", "VmHWM:") ?? 0 }

    /// Memory the kernel says is available to start new work (MemAvailable), in bytes.
    public static func availableBytes() -> Int? { procValue("/proc/meminfo", "MemAvailable:") }

    /// A "Key:   N kB" line of a /proc file, in bytes.
    private static func procValue(_ file: String, _ key: String) -> Int? {
        guard let s = try? String(contentsOfFile: file, encoding: .utf8) else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix(key) {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
        }
        return nil
    }

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
