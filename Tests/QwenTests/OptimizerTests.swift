import Foundation
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// The optimizers and schedules against mlx's own (expected/mlx_optim.json, from mlx 0.32 and
/// mlx-lm's build_schedule), and ten AdamW steps of a real LoRA against PyTorch + PEFT.
final class OptimizerTests: XCTestCase {
    func testSchedulesMatchMLX() throws {
        let all = try XCTUnwrap(try Fixtures.json("expected/mlx_optim.json") as? [String: Any])
        for s in try XCTUnwrap(all["schedules"] as? [[String: Any]]) {
            let cfg = try XCTUnwrap(s["config"] as? [String: Any])
            let kind = try XCTUnwrap(LearningRateSchedule.Kind(rawValue: cfg["name"] as! String))
            let sched = try LearningRateSchedule(kind: kind, arguments: cfg["arguments"] as! [Double],
                                                 warmup: cfg["warmup"] as? Int ?? 0, warmupInit: cfg["warmup_init"] as? Double ?? 0)
            let rates = s["rates"] as! [Double]
            let top = rates.map(abs).max() ?? 1
            for (i, want) in rates.enumerated() {  // mlx computes in f32
                XCTAssertEqual(sched.rate(at: i), want, accuracy: 1e-6 * top, "\(cfg) step \(i)")
            }
        }
    }

    func testScheduleArgumentsChecked() {
        XCTAssertThrowsError(try LearningRateSchedule(kind: .cosineDecay, arguments: [1e-3]))
        XCTAssertThrowsError(try LearningRateSchedule(kind: .linearSchedule, arguments: [1e-3, 0, 0]))
        XCTAssertThrowsError(try LearningRateSchedule(kind: .cosineDecay, arguments: [.nan, 10]))
    }

    func testOptimizersMatchMLX() throws {
        let all = try XCTUnwrap(try Fixtures.json("expected/mlx_optim.json") as? [String: Any])
        let p0 = (all["p0"] as! [Double]).map(Float.init)
        let grads = (all["grads"] as! [[Double]]).map { $0.map(Float.init) }
        let lr = Float(all["lr"] as! Double)
        for u in try XCTUnwrap(all["updates"] as? [[String: Any]]) {
            let cfg = u["config"] as! [String: Any]
            let kind = try XCTUnwrap(OptimizerSettings.Kind(rawValue: u["optimizer"] as! String))
            let settings = OptimizerSettings(kind: kind, betas: (cfg["betas"] as? [Double])?.map(Float.init) ?? [0.9, 0.999],
                                             eps: Float(cfg["eps"] as? Double ?? 1e-8),
                                             weightDecay: (cfg["weight_decay"] as? Double).map(Float.init),
                                             biasCorrection: cfg["bias_correction"] as? Bool ?? false,
                                             momentum: Float(cfg["momentum"] as? Double ?? 0))
            let value = FloatBuffer(p0), grad = FloatBuffer(count: p0.count)
            let opt = Optimizer(settings, parameters: [(value, grad)])
            for (k, g) in grads.enumerated() {
                grad.pointer.update(from: g, count: g.count)
                opt.update(lr: lr)
                let want = (u["values"] as! [[Double]])[k].map(Float.init)
                for i in 0..<want.count {
                    XCTAssertEqual(value[i], want[i], accuracy: 2e-6 * max(1, abs(want[i])), "\(kind) \(cfg) step \(k) [\(i)]")
                }
            }
        }
    }

    /// Ten AdamW steps on a batch of two sequences (one prompt-masked): each step's loss equal
    /// to PyTorch's to 1e-4 relative, with mlx's default (no bias correction) and with it.
    func testTenAdamWStepsMatchPyTorch() throws {
        let all = try XCTUnwrap(try Fixtures.json("expected/train.json") as? [String: Any])
        let adam = try XCTUnwrap(all["adam"] as? [String: Any])
        let b = adam["batch"] as! [String: Any]
        let batch = TrainingBatch(sequences: (b["sequences"] as! [[Int]]).map { $0.map(Int32.init) }, offsets: b["offsets"] as! [Int])
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"), f32Weights: .no).model
        for (key, bc) in [("losses", false), ("losses_bias_correction", true)] {
            let params = try LoRAParameters(adapter: try LoRAAdapter.load(path: Fixtures.path("train/qwen3-adam"), config: m.config),
                                            config: m.config)
            let pass = LoRATrainingPass(model: m, parameters: params)
            let betas = (adam["betas"] as! [Double]).map(Float.init)
            let opt = Optimizer(OptimizerSettings(kind: .adamw, betas: betas, eps: Float(adam["eps"] as! Double),
                                                  weightDecay: Float(adam["weight_decay"] as! Double), biasCorrection: bc),
                                parameters: params.tensors.flatMap(\.parameters))
            let want = (adam[key] as! [Double]).map(Float.init)
            XCTAssertGreaterThan(abs(want[0] - want[9]) / want[0], 0.05, "the reference losses must move")
            for (i, w) in want.enumerated() {
                params.zeroGradients()
                let loss = try pass.lossAndGradients(batch).loss
                XCTAssertLessThan(abs(loss - w) / w, 1e-4, "\(key) step \(i): \(loss) vs PyTorch \(w)")
                opt.update(lr: Float(adam["lr"] as! Double))
            }
        }
    }

    func testClippingScalesToTheMaxNorm() {
        let a = FloatBuffer([1, 2]), ga = FloatBuffer([3, 0]), b = FloatBuffer([0]), gb = FloatBuffer([4])
        let opt = Optimizer(OptimizerSettings(kind: .sgd), parameters: [(a, ga), (b, gb)])
        XCTAssertEqual(opt.clipGradients(maxNorm: 10), 5, accuracy: 1e-6)
        XCTAssertEqual(ga.array + gb.array, [3, 0, 4], "below the limit nothing changes")
        XCTAssertEqual(opt.clipGradients(maxNorm: 1), 5, accuracy: 1e-6)
        let n = (ga.array + gb.array).reduce(0) { $0 + $1 * $1 }.squareRoot()
        XCTAssertEqual(n, 1, accuracy: 1e-5)
        XCTAssertEqual(ga[0] / gb[0], 0.75, accuracy: 1e-6, "the direction is kept")
    }
}
