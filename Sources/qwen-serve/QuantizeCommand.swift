import ArgumentParser
import QwenFormats
import QwenRuntime

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write a float checkpoint as a quantized GGUF (the weights --quantize makes at load).",
        discussion: "Reads a Hugging Face model directory (config.json, tokenizer files, safetensors in bf16/f16/f32) or a GGUF whose matrices are f32/f16/bf16, and writes one .gguf with the hyper-parameters, tokenizer and chat template that this server and llama.cpp read (a GGUF's metadata is copied). Matrices whose width is a multiple of 32 become the chosen type (q4_k: widths that are multiples of 256; others q8_0); norms and biases stay as they are.")

    @Option(help: "A Hugging Face model directory, a .gguf with float matrices, or a hub repo id (downloaded first).") var model: String
    @Option(help: "Block type: q8_0, q4_0 or q4_k.") var type: QuantizeType
    @Option(help: "The .gguf file to write (must not exist).") var output: String
    @Option(help: "general.name in the file (default: the directory's name, or the GGUF's own).") var name: String?

    func run() throws {
        try reportingErrors {
            let path = try ModelLocator.resolve(model, log: log)
            let s = try GGUFExport.quantize(model: path, type: type, to: output, name: name)
            log(String(format: "wrote %@: %d tensors, %d quantized to %@, %.1f MB", output, s.tensors, s.quantized, type.rawValue,
                       Double(s.bytes) / 1e6))
        }
    }
}
