import QwenKernels

/// The keys and values of one sequence, per layer, as rows of kvHeads·headDim floats
/// (one row per position). Grows by doubling.
public final class KVCache {
    public let layers: Int
    public let width: Int
    public private(set) var capacity: Int
    /// Positions already written (and so visible to attention).
    public internal(set) var length = 0
    var keys: [FloatBuffer]
    var values: [FloatBuffer]

    public init(config: QwenConfig, capacity: Int = 256) {
        layers = config.layers
        width = config.kvHeads * config.headDim
        self.capacity = max(capacity, 1)
        keys = (0..<layers).map { _ in FloatBuffer(count: max(capacity, 1) * config.kvHeads * config.headDim) }
        values = (0..<layers).map { _ in FloatBuffer(count: max(capacity, 1) * config.kvHeads * config.headDim) }
    }

    func reserve(_ n: Int) {
        guard n > capacity else { return }
        var newCap = capacity
        while newCap < n { newCap *= 2 }
        for l in 0..<layers {
            let k = FloatBuffer(count: newCap * width), v = FloatBuffer(count: newCap * width)
            k.pointer.update(from: keys[l].pointer, count: length * width)
            v.pointer.update(from: values[l].pointer, count: length * width)
            keys[l] = k
            values[l] = v
        }
        capacity = newCap
    }

    /// Forgets positions from `n` on (for reuse of a common prefix).
    public func truncate(to n: Int) { length = min(length, max(n, 0)) }
}
