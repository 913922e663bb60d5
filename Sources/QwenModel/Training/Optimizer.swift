import Foundation
import QwenKernels

/// mlx's optimizers, with their arithmetic and defaults (mlx.optimizers): Adam, AdamW
/// (decoupled weight decay, p ← p·(1 − lr·wd) before the Adam step) and SGD. Adam's moments
/// are bias-corrected only when `bias_correction` is set, as in mlx (its default is off).
public struct OptimizerSettings: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable { case adam, adamw, sgd }
    public var kind: Kind
    public var betas: [Float] = [0.9, 0.999]
    public var eps: Float = 1e-8
    public var weightDecay: Float
    public var biasCorrection = false
    /// SGD only.
    public var momentum: Float = 0

    public init(kind: Kind, betas: [Float] = [0.9, 0.999], eps: Float = 1e-8, weightDecay: Float? = nil,
                biasCorrection: Bool = false, momentum: Float = 0) {
        self.kind = kind
        self.betas = betas
        self.eps = eps
        self.weightDecay = weightDecay ?? (kind == .adamw ? 0.01 : 0)
        self.biasCorrection = biasCorrection
        self.momentum = momentum
    }
}

/// The optimizer's state over a fixed list of parameter buffers: the step count and, per
/// parameter, Adam's two moments (or SGD's velocity).
public final class Optimizer {
    public let settings: OptimizerSettings
    public private(set) var step = 0
    let params: [(value: FloatBuffer, grad: FloatBuffer)]
    /// First and second moments (Adam), velocity in `m` (SGD with momentum).
    public let m: [FloatBuffer]
    public let v: [FloatBuffer]

    public init(_ settings: OptimizerSettings, parameters: [(value: FloatBuffer, grad: FloatBuffer)]) {
        self.settings = settings
        params = parameters
        m = parameters.map { FloatBuffer(count: $0.value.count) }
        v = parameters.map { FloatBuffer(count: settings.kind == .sgd ? 0 : $0.value.count) }
    }

    /// Scales every gradient so their global L2 norm is at most `maxNorm` (as
    /// torch.nn.utils.clip_grad_norm_ and mlx's clip_grad_norm); returns the norm before.
    @discardableResult
    public func clipGradients(maxNorm: Float) -> Float {
        var ss: Double = 0
        for p in params {
            let g = p.grad.pointer
            for j in 0..<p.grad.count { ss += Double(g[j]) * Double(g[j]) }
        }
        let norm = Float(ss.squareRoot())
        if norm > maxNorm, norm > 0 {
            let k = maxNorm / (norm + 1e-6)
            for p in params {
                let g = p.grad.pointer
                for j in 0..<p.grad.count { g[j] *= k }
            }
        }
        return norm
    }

    /// Restores a checkpoint's state.
    public func restore(step: Int) { self.step = step }

    /// One update of every parameter from its gradient, at learning rate `lr`.
    public func update(lr: Float) {
        step += 1
        let s = settings
        let b1 = s.betas.first ?? 0.9, b2 = s.betas.count > 1 ? s.betas[1] : 0.999
        let c1: Float = s.biasCorrection ? 1 - powf(b1, Float(step)) : 1
        let c2: Float = s.biasCorrection ? 1 - powf(b2, Float(step)) : 1
        for (i, p) in params.enumerated() {
            let x = p.value.pointer, g = p.grad.pointer, n = p.value.count
            let mi = m[i].pointer
            switch s.kind {
            case .adam, .adamw:
                let vi = v[i].pointer
                let decay: Float = s.kind == .adamw ? 1 - lr * s.weightDecay : 1
                for j in 0..<n {
                    mi[j] = b1 * mi[j] + (1 - b1) * g[j]
                    vi[j] = b2 * vi[j] + (1 - b2) * g[j] * g[j]
                    x[j] = x[j] * decay - lr * (mi[j] / c1) / ((vi[j] / c2).squareRoot() + s.eps)
                }
            case .sgd:
                // mlx's SGD: g += wd·p; v = μ·v + g; p -= lr·v (dampening 0, no Nesterov).
                for j in 0..<n {
                    var gj = g[j]
                    if s.weightDecay != 0 { gj += s.weightDecay * x[j] }
                    if s.momentum != 0 {
                        mi[j] = s.momentum * mi[j] + gj
                        gj = mi[j]
                    }
                    x[j] -= lr * gj
                }
            }
        }
    }
}

/// A learning-rate schedule with mlx's semantics (mlx.optimizers.schedulers), indexed by the
/// optimizer's step before the update (the first update uses step 0).
public struct LearningRateSchedule: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case constant
        case cosineDecay = "cosine_decay"
        case linearSchedule = "linear_schedule"
        case exponentialDecay = "exponential_decay"
        case stepDecay = "step_decay"
    }
    public var kind: Kind
    public var arguments: [Double]
    public var warmup: Int
    public var warmupInit: Double

    public struct ScheduleError: Error, CustomStringConvertible {
        public let description: String
    }

    public static func constant(_ lr: Double) -> LearningRateSchedule {
        LearningRateSchedule(unchecked: .constant, arguments: [lr], warmup: 0, warmupInit: 0)
    }

    /// Checks the arguments each schedule takes: cosine_decay(init, decay_steps[, end]),
    /// linear_schedule(init, end, steps), exponential_decay(init, rate), step_decay(init, rate, step_size).
    public init(kind: Kind, arguments: [Double], warmup: Int = 0, warmupInit: Double = 0) throws(ScheduleError) {
        let counts: ClosedRange<Int>
        switch kind {
        case .constant: counts = 1...1
        case .cosineDecay: counts = 2...3
        case .linearSchedule: counts = 3...3
        case .exponentialDecay: counts = 2...2
        case .stepDecay: counts = 3...3
        }
        guard counts.contains(arguments.count) else {
            throw ScheduleError(description: "lr_schedule \(kind.rawValue) takes \(counts.lowerBound == counts.upperBound ? "\(counts.lowerBound)" : "\(counts.lowerBound)–\(counts.upperBound)") arguments, got \(arguments.count)")
        }
        guard arguments.allSatisfy(\.isFinite) else { throw ScheduleError(description: "lr_schedule arguments must be finite numbers") }
        if kind == .cosineDecay || kind == .linearSchedule || kind == .stepDecay {
            let steps = kind == .cosineDecay ? arguments[1] : arguments[2]
            guard steps >= 1 else { throw ScheduleError(description: "lr_schedule \(kind.rawValue): its step count must be at least 1") }
        }
        guard warmup >= 0 else { throw ScheduleError(description: "lr_schedule warmup must be 0 or more") }
        self.kind = kind
        self.arguments = arguments
        self.warmup = warmup
        self.warmupInit = warmupInit
    }

    private init(unchecked kind: Kind, arguments: [Double], warmup: Int, warmupInit: Double) {
        self.kind = kind
        self.arguments = arguments
        self.warmup = warmup
        self.warmupInit = warmupInit
    }

    public var initial: Double { arguments[0] }

    /// The rate for the update at optimizer step `step` (0 for the first).
    public func rate(at step: Int) -> Double {
        if warmup > 0 {
            // join_schedules([linear_schedule(warmup_init, init, warmup), main], [warmup + 1])
            if step < warmup + 1 { return warmupInit + Double(min(step, warmup)) * (initial - warmupInit) / Double(warmup) }
            return main(step - warmup - 1)
        }
        return main(step)
    }

    private func main(_ step: Int) -> Double {
        let a = arguments
        switch kind {
        case .constant: return a[0]
        case .cosineDecay:
            let decaySteps = a[1], end = a.count > 2 ? a[2] : 0
            let s = min(Double(step), decaySteps)
            return end + 0.5 * (1 + cos(Double.pi * s / decaySteps)) * (a[0] - end)
        case .linearSchedule:
            let s = min(Double(step), a[2])
            return a[0] + s * (a[1] - a[0]) / a[2]
        case .exponentialDecay: return a[0] * pow(a[1], Double(step))
        case .stepDecay: return a[0] * pow(a[1], Double(step / max(1, Int(a[2]))))
        }
    }
}
