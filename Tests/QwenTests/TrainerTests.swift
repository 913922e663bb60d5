import Foundation
import QwenKernels
import QwenModel
import QwenRuntime
import QwenTraining
import XCTest

/// The training run on the tiny checkpoints: configuration, data checks, exact resume,
/// dropout's gradient, the memory plan.
final class TrainerTests: XCTestCase {
    var tmp: String!

    override func setUpWithError() throws {
        tmp = NSTemporaryDirectory() + "qwen-trainer-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: tmp) }

    func write(_ name: String, _ lines: [String]) throws {
        try FileManager.default.createDirectory(atPath: tmp + "/data", withIntermediateDirectories: true)
        try (lines.joined(separator: "\n") + "\n").write(toFile: tmp + "/data/" + name, atomically: true, encoding: .utf8)
    }

    func chats(_ n: Int, seed: Int) -> [String] {
        (0..<n).map { i in
            let q = String(repeating: "question \(i * 7 + seed) ", count: 1 + i % 3)
            return #"{"messages": [{"role": "user", "content": "\#(q)"}, {"role": "assistant", "content": "answer \#(i) is 小鹅"}]}"#
        }
    }

    func config(iters: Int = 8) -> TrainingConfig {
        var c = TrainingConfig()
        c.model = Fixtures.path("qwen3-tiny-f32")
        c.train = true
        c.data = tmp + "/data"
        c.numLayers = -1
        c.batchSize = 2
        c.iters = iters
        c.stepsPerReport = 2
        c.stepsPerEval = 4
        c.saveEvery = 3
        c.valBatches = 2
        c.learningRate = 1e-3
        c.optimizer = .adamw
        c.loraKeys = [.q, .v, .down]
        c.loraRank = 4
        c.loraDropout = 0.1
        c.gradAccumulationSteps = 2
        c.lrSchedule = try! LearningRateSchedule(kind: .cosineDecay, arguments: [1e-3, 8], warmup: 2)
        c.adapterPath = tmp + "/adapters"
        c.maxSeqLength = 64
        return c
    }

    func trainer(_ c: TrainingConfig) throws -> (LoRATrainer, [String]) {
        let m = try LoadedModel.load(path: c.model, f32Weights: .no)
        let t = try LoRATrainer(config: c, model: m)
        var lines: [String] = []
        t.output = { lines.append($0) }
        return (t, lines)
    }

    func run(_ c: TrainingConfig, stopAt: Int? = nil) throws -> [String] {
        let m = try LoadedModel.load(path: c.model, f32Weights: .no)
        let t = try LoRATrainer(config: c, model: m)
        var lines: [String] = []
        t.output = { lines.append($0) }
        if let stopAt {
            var reported = 0
            t.output = { line in
                lines.append(line)
                if line.contains("Train loss") { reported += 1 }
            }
            t.shouldStop = { reported >= stopAt / 2 }
        }
        try t.run()
        return lines
    }

    func testResumeContinuesExactly() throws {
        try write("train.jsonl", chats(9, seed: 1))
        try write("valid.jsonl", chats(4, seed: 2))
        var whole = config()
        whole.adapterPath = tmp + "/whole"
        let a = try run(whole)
        XCTAssertTrue(a.contains { $0.hasPrefix("Iter 1: Val loss ") }, a.joined(separator: "\n"))
        XCTAssertTrue(a.contains { $0.range(of: #"^Iter 2: Train loss [0-9.]+, Learning Rate [0-9.e+-]+, It/sec [0-9.]+, Tokens/sec [0-9.]+, Trained Tokens \d+, Peak mem [0-9.]+ GB$"#, options: .regularExpression) != nil }, a.joined(separator: "\n"))
        XCTAssertTrue(a.contains("Saved final weights to \(whole.adapterPath)/adapters.safetensors."))

        // Stopped after iteration 4 (as a signal stops it), then resumed.
        var part = config()
        part.adapterPath = tmp + "/part"
        let b = try run(part, stopAt: 4)
        XCTAssertTrue(b.contains { $0.hasPrefix("Stopped at iteration 4") }, b.joined(separator: "\n"))
        part.resume = true
        let c = try run(part)
        XCTAssertTrue(c.contains { $0.hasPrefix("Resuming at iteration 5") }, c.joined(separator: "\n"))
        let w1 = try Data(contentsOf: URL(fileURLWithPath: whole.adapterPath + "/adapters.safetensors"))
        let w2 = try Data(contentsOf: URL(fileURLWithPath: part.adapterPath + "/adapters.safetensors"))
        XCTAssertEqual(w1, w2, "a resumed run must end with the same adapter as an uninterrupted one")
        let m1 = try String(contentsOfFile: whole.adapterPath + "/metrics.csv", encoding: .utf8)
        let m2 = try String(contentsOfFile: part.adapterPath + "/metrics.csv", encoding: .utf8)
        func losses(_ s: String) -> [String] { s.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).prefix(3).joined(separator: ",") } }
        XCTAssertEqual(losses(m1), losses(m2))
        XCTAssertTrue(FileManager.default.fileExists(atPath: part.adapterPath + "/loss.svg"))
        // The trained adapter loads for serving.
        let m = try LoadedModel.load(path: whole.model)
        let adapter = try LoRAAdapter.load(path: whole.adapterPath, config: m.model.config)
        XCTAssertEqual(Set(adapter.targetModules), ["q_proj", "v_proj", "down_proj"])
    }

    func testSameSeedSameRunOtherSeedOtherRun() throws {
        try write("train.jsonl", chats(9, seed: 1))
        try write("valid.jsonl", chats(4, seed: 2))
        var c = config(iters: 4)
        c.adapterPath = tmp + "/s1"
        _ = try run(c)
        c.adapterPath = tmp + "/s2"
        _ = try run(c)
        c.adapterPath = tmp + "/s3"
        c.seed = 5
        _ = try run(c)
        let f = { (d: String) in try Data(contentsOf: URL(fileURLWithPath: self.tmp + "/" + d + "/adapters.safetensors")) }
        XCTAssertEqual(try f("s1"), try f("s2"))
        XCTAssertNotEqual(try f("s1"), try f("s3"))
    }

    func testBadDataNamesFileAndLine() throws {
        try write("valid.jsonl", chats(2, seed: 2))
        let cases: [([String], String)] = [
            ([], "no examples"),
            (["{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}"], "train.jsonl:1: the chat has no assistant message"),
            (chats(1, seed: 0) + ["{not json"], "train.jsonl:2: not JSON"),
            (chats(2, seed: 0) + ["", "[1, 2]"], "train.jsonl:4: each line must be a JSON object"),
            (["{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}"], "train.jsonl:1: message 0 has the unknown role \"robot\""),
            (["{\"prompt\": \"a\"}"], "train.jsonl:1: \"completion\" must be a string"),
            (["{\"other\": 1}"], "train.jsonl:1: a line must hold"),
        ]
        for (lines, message) in cases {
            if lines.isEmpty {
                try Data().write(to: URL(fileURLWithPath: tmp + "/data/train.jsonl"))
            } else {
                try write("train.jsonl", lines)
            }
            let (t, _) = try trainer(config())
            XCTAssertThrowsError(try t.run()) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e) should say \(message)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/adapters/adapters.safetensors"), "nothing is trained on bad data")
        }
        try FileManager.default.removeItem(atPath: tmp + "/data/train.jsonl")
        let (t, _) = try trainer(config())
        XCTAssertThrowsError(try t.run()) { XCTAssertTrue("\($0)".contains("train.jsonl: missing"), "\($0)") }
    }

    func testMaskPromptNeedsAFinalAssistantTurn() throws {
        try write("train.jsonl", [#"{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}"#])
        try write("valid.jsonl", chats(2, seed: 2))
        var c = config()
        c.maskPrompt = true
        let (t, _) = try trainer(c)
        XCTAssertThrowsError(try t.run()) { XCTAssertTrue("\($0)".contains("train.jsonl:1: mask_prompt"), "\($0)") }
    }

    func testMemoryPlanRefusesUpFront() throws {
        try write("train.jsonl", chats(9, seed: 1))
        try write("valid.jsonl", chats(4, seed: 2))
        let (t, _) = try trainer(config())
        t.memoryLimit = 1 << 20
        XCTAssertThrowsError(try t.run()) { XCTAssertTrue("\($0)".contains("this run needs about"), "\($0)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/adapters/adapters.safetensors"))
    }

    func testConfigurationKeys() throws {
        let yaml = tmp + "/ft.yaml"
        try """
        model: some/model
        lora_layers: 4
        learning_rate: 2e-5
        optimizer: adamw
        optimizer_config:
          adamw:
            weight_decay: 0.05
            betas: [0.8, 0.95]
            bias_correction: true
        lr_schedule:
          name: cosine_decay
          arguments: [2e-5, 100, 1e-7]
          warmup: 10
          warmup_init: 1e-8
        lora_parameters: {keys: [self_attn.q_proj, mlp.down_proj], rank: 16, scale: 10.0, dropout: 0.05}
        mask_prompt: true
        report_to: null
        """.write(toFile: yaml, atomically: true, encoding: .utf8)
        var c = TrainingConfig()
        try c.apply(yamlFile: yaml)
        XCTAssertEqual(c.model, "some/model")
        XCTAssertEqual(c.numLayers, 4)
        XCTAssertEqual(c.learningRate, 2e-5)
        XCTAssertEqual(c.optimizerSettings, OptimizerSettings(kind: .adamw, betas: [0.8, 0.95], eps: 1e-8, weightDecay: 0.05, biasCorrection: true))
        XCTAssertEqual(c.schedule.rate(at: 0), 1e-8, accuracy: 1e-15)
        XCTAssertEqual(c.schedule.rate(at: 10), 2e-5, accuracy: 1e-12)
        XCTAssertEqual(c.projections, [.q, .down])
        XCTAssertEqual(c.loraRank, 16)
        XCTAssertTrue(c.maskPrompt)
        // mlx-lm's defaults where nothing is said.
        XCTAssertEqual(c.batchSize, 4)
        XCTAssertEqual(c.iters, 1000)
        XCTAssertEqual(c.maxSeqLength, 2048)

        for (bad, message) in [("iterz: 3", "unknown key iterz"), ("lora_parameters: {rank: 8, alpha: 16}", "scale, not alpha"),
                               ("fine_tune_type: dora", "dora is not supported"), ("use_dora: true", "DoRA is not supported"),
                               ("lora_parameters: {keys: [mlp.experts]}", "no module mlp.experts"), ("optimizer: muon", "muon"),
                               ("batch_size: many", "batch_size must be an integer"), ("- a list", "must be a mapping"),
                               ("lr_schedule: {name: cosine_decay, arguments: [1e-5]}", "takes 2–3 arguments")] {
            try bad.write(toFile: yaml, atomically: true, encoding: .utf8)
            var d = TrainingConfig()
            XCTAssertThrowsError(try d.apply(yamlFile: yaml)) { e in
                XCTAssertTrue("\(e)".contains(yaml) && "\(e)".contains(message), "\(e) should name the file and say \(message)")
            }
        }
        var z = TrainingConfig()
        z.train = true
        z.loraRank = 0
        XCTAssertThrowsError(try z.validate()) { XCTAssertTrue("\($0)".contains("rank must be at least 1")) }
    }

    /// With dropout, the gradient is that of the loss under the step's fixed mask: checked
    /// against central differences of the loss.
    func testDropoutGradientMatchesFiniteDifferences() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"), f32Weights: .no).model
        let params = try LoRAParameters(config: m.config, numLayers: -1, projections: [.q, .up], rank: 3, scale: 2, dropout: 0.3, seed: 3)
        for t in params.tensors { for i in 0..<t.bt.count { t.bt[i] = Float(i % 5) * 0.05 - 0.1 } }
        let pass = LoRATrainingPass(model: m, parameters: params)
        pass.dropoutSeed = 9
        pass.dropoutStep = 4
        let batch = TrainingBatch(sequences: [[5, 9, 33, 2, 71, 8, 15, 4], [3, 99, 14, 6]], offsets: [2, 0])
        try pass.lossAndGradients(batch)
        let noDropout = LoRATrainingPass(model: m, parameters: try LoRAParameters(config: m.config, numLayers: -1, projections: [.q, .up],
                                                                                  rank: 3, scale: 2, dropout: 0, seed: 3))
        for t in noDropout.parameters.tensors { for i in 0..<t.bt.count { t.bt[i] = Float(i % 5) * 0.05 - 0.1 } }
        XCTAssertNotEqual(try pass.loss(batch).loss, try noDropout.loss(batch).loss, "dropout must change the loss")
        var checked = 0
        for t in params.tensors {
            for i in stride(from: 0, to: t.a.count, by: max(1, t.a.count / 4)) {
                let g = t.gradA[i], old = t.a[i], h: Float = 1e-2
                t.a[i] = old + h
                let up = try pass.loss(batch).loss
                t.a[i] = old - h
                let down = try pass.loss(batch).loss
                t.a[i] = old
                let fd = (up - down) / (2 * h)
                XCTAssertEqual(g, fd, accuracy: 2e-3 + 2e-2 * abs(fd), "layer \(t.layer) \(t.projection) A[\(i)]")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 20)
    }

    /// OpenAI's rules for jobs: every assistant turn is trained unless its weight is 0, and
    /// nothing else (system, user turns) is.
    func testAssistantWeightsMarkOnlyTheirTurns() throws {
        let m = try LoadedModel.load(path: Fixtures.path("qwen3-tiny-f32"), f32Weights: .no)
        try write("w.jsonl", [#"{"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "first answer", "weight": 0}, {"role": "user", "content": "c d"}, {"role": "assistant", "content": "second answer"}, {"role": "user", "content": "e"}, {"role": "assistant", "content": "third"}]}"#])
        var f = TrainingData.Format()
        f.assistantWeights = true
        let ex = try TrainingData.load(file: tmp + "/data/w.jsonl", tokenizer: m.tokenizer, format: f)[0]
        let mask = try XCTUnwrap(ex.mask)
        let trained = m.tokenizer.decode(zip(ex.tokens, mask).filter { $0.1 }.map(\.0))
        XCTAssertTrue(trained.contains("second answer") && trained.contains("third"), trained)
        XCTAssertFalse(trained.contains("first answer") || trained.contains("c d") || trained.contains("a b"), trained)
        let batch = TrainingBatch(sequences: [ex.tokens], offsets: [ex.offset], masks: [ex.mask])
        XCTAssertEqual(batch.trainedTokens, mask.dropFirst().filter { $0 }.count)
    }

    func testGradientClippingKeyRuns() throws {
        try write("train.jsonl", chats(9, seed: 1))
        try write("valid.jsonl", chats(4, seed: 2))
        // SGD: its step is the gradient itself, so a clipped run moves far less.
        var c = config(iters: 4)
        c.optimizer = .sgd
        c.maxGradNorm = 1e-3
        c.adapterPath = tmp + "/clipped"
        _ = try run(c)
        var d = config(iters: 4)
        d.optimizer = .sgd
        d.adapterPath = tmp + "/free"
        _ = try run(d)
        let f = { (dir: String) in try Data(contentsOf: URL(fileURLWithPath: self.tmp + "/" + dir + "/adapters.safetensors")) }
        XCTAssertNotEqual(try f("clipped"), try f("free"), "clipping at a tiny norm must change the run")
    }
}
