import ArgumentParser
import QwenFormats
import QwenRuntime

struct FuseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuse",
        abstract: "Merge a LoRA adapter into the model's weights and save the result (like mlx_lm.fuse).",
        discussion: "A model directory gives a directory (one model.safetensors plus the config and tokenizer files); a .gguf gives a .gguf whose merged matrices are f32.")

    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id.") var model = "default"
    @Option(name: .customLong("adapter-path"), help: "The LoRA adapter directory (PEFT or mlx-lm).") var adapterPath: String
    @Option(name: .customLong("save-path"), help: "Where to write the merged model (must not exist).") var savePath: String
    @Option(help: "Tensor type for a safetensors output: f32, bf16 or f16.") var dtype = "f32"

    func run() throws {
        try reportingErrors {
            guard let dt = SafetensorsWriter.DType(rawValue: dtype.uppercased()) else {
                throw ValidationError("--dtype must be f32, bf16 or f16, not '\(dtype)'")
            }
            let path = try ModelLocator.resolve(model, log: log)
            let n = try Fuse.fuse(model: path, adapter: adapterPath, output: savePath, dtype: dt)
            log("merged \(n) matrices; wrote \(savePath)")
        }
    }
}
