import ArgumentParser
import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import QwenTraining

/// `qwen-serve lora`: mlx_lm.lora's command line on this engine. Flags have mlx_lm.lora's
/// names; each overrides the same key of the --config file, which overrides mlx-lm's defaults.
struct LoRACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Fine-tune a LoRA adapter on the CPU (mlx_lm.lora's flags, configuration file and output).",
        discussion: """
            Data: a directory with train.jsonl, valid.jsonl and test.jsonl; lines of {"messages": [...]}, \
            {"prompt", "completion"} or {"text"}. The adapter is written to --adapter-path in mlx-lm's layout \
            (or PEFT's with --save-format peft) and `qwen-serve serve --adapter name=PATH` serves it as it is.
            """)

    @Option(name: [.short, .customLong("config")], help: "A YAML file of mlx_lm.lora's keys.") var config: String?
    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id.") var model: String?
    @Flag(help: "Train.") var train = false
    @Flag(help: "Evaluate on the test set (test loss and perplexity).") var test = false
    @Option(help: "The directory with train.jsonl, valid.jsonl and test.jsonl.") var data: String?
    @Option(name: .customLong("fine-tune-type"), help: "lora (dora and full are not supported).") var fineTuneType: String?
    @Option(help: "adam, adamw or sgd.") var optimizer: String?
    @Flag(name: .customLong("mask-prompt"), help: "Train only the last assistant turn (or the completion).") var maskPrompt = false
    @Option(name: .customLong("num-layers"), parsing: .unconditional, help: "Layers to adapt, counted from the last; -1 for all (default 16).") var numLayers: Int?
    @Option(name: .customLong("batch-size")) var batchSize: Int?
    @Option var iters: Int?
    @Option(name: .customLong("val-batches"), parsing: .unconditional, help: "Validation batches; -1 for the whole set.") var valBatches: Int?
    @Option(name: .customLong("learning-rate")) var learningRate: Double?
    @Option(name: .customLong("steps-per-report")) var stepsPerReport: Int?
    @Option(name: .customLong("steps-per-eval")) var stepsPerEval: Int?
    @Option(name: .customLong("grad-accumulation-steps")) var gradAccumulationSteps: Int?
    @Option(name: .customLong("resume-adapter-file"), help: "Start from these adapter weights (mlx-lm's or PEFT's safetensors).") var resumeAdapterFile: String?
    @Option(name: .customLong("adapter-path"), help: "Where to save the adapter (default: adapters).") var adapterPath: String?
    @Option(name: .customLong("save-every")) var saveEvery: Int?
    @Option(name: .customLong("test-batches"), parsing: .unconditional) var testBatches: Int?
    @Option(name: .customLong("max-seq-length")) var maxSeqLength: Int?
    @Flag(name: .customLong("grad-checkpoint"), help: "Keep only each layer's input and recompute it during the backward (less memory).") var gradCheckpoint = false
    @Option var seed: Int?
    @Option(name: .customLong("max-grad-norm"), help: "Clip the gradients' global norm to this before each update (default: no clipping).") var maxGradNorm: Double?
    @Option(name: .customLong("save-format"), help: "mlx (adapters.safetensors) or peft (adapter_model.safetensors).") var saveFormat: String?
    @Option(help: "Forward products with quantized weights: f32 (default; gradients as PyTorch's) or int8 (the serving int8 kernels, faster; backward stays f32).")
    var compute: ComputeMode = .f32
    @Flag(help: "Continue the run saved in --adapter-path from its last checkpoint (optimizer state, step and data order included).") var resume = false

    func run() throws {
        try reportingErrors {
            var c = TrainingConfig()
            if let config { try c.apply(yamlFile: config) }
            let flags: [(String, Any?)] = [
                ("model", model), ("data", data), ("fine_tune_type", fineTuneType), ("optimizer", optimizer),
                ("num_layers", numLayers), ("batch_size", batchSize), ("iters", iters), ("val_batches", valBatches),
                ("learning_rate", learningRate), ("steps_per_report", stepsPerReport), ("steps_per_eval", stepsPerEval),
                ("grad_accumulation_steps", gradAccumulationSteps), ("resume_adapter_file", resumeAdapterFile),
                ("adapter_path", adapterPath), ("save_every", saveEvery), ("test_batches", testBatches),
                ("max_seq_length", maxSeqLength), ("seed", seed), ("save_format", saveFormat), ("max_grad_norm", maxGradNorm),
                ("train", train ? true : nil), ("test", test ? true : nil), ("mask_prompt", maskPrompt ? true : nil),
                ("grad_checkpoint", gradCheckpoint ? true : nil), ("resume", resume ? true : nil),
            ]
            for (k, v) in flags {
                guard let v else { continue }
                do { try c.set(k, v) } catch { throw ValidationError("--\(k.replacingOccurrences(of: "_", with: "-")): \(error)") }
            }
            try c.validate()
            try BLAS.load()
            log("Loading pretrained model")
            let path = try ModelLocator.resolve(c.model, log: log)
            // Training reads the weights in their stored form: no f32 copy of the model.
            let loaded = try LoadedModel.load(path: path, f32Weights: .no, choice: compute == .int8 ? .int8 : .f32)
            let trainer = try LoRATrainer(config: c, model: loaded)
            if isatty(2) != 0 {
                trainer.progress = { it, total, eta in
                    let width = 30, done = width * it / max(total, 1)
                    let bar = String(repeating: "█", count: done) + String(repeating: "·", count: width - done)
                    let e = Int(eta.isFinite ? eta : 0)
                    FileHandle.standardError.write(Data(String(format: "\r%@ %d/%d  ETA %d:%02d:%02d ", bar, it, total, e / 3600, e / 60 % 60, e % 60).utf8))
                    if it == total { FileHandle.standardError.write(Data("\n".utf8)) }
                }
            }
            StopSignal.install()
            trainer.shouldStop = { StopSignal.requested }
            try trainer.run()
        }
    }
}

/// SIGINT / SIGTERM during training: finish the step, checkpoint, stop (a second signal kills).
enum StopSignal {
    nonisolated(unsafe) private static var flag: sig_atomic_t = 0
    static var requested: Bool { flag != 0 }

    static func install() {
        for s in [SIGINT, SIGTERM] {
            signal(s) { sig in
                if StopSignal.flag != 0 { signal(sig, SIG_DFL); raise(sig) }
                StopSignal.flag = 1
            }
        }
    }
}
