import Foundation
import QwenFormats
import QwenKernels
import QwenModel

/// Merges a LoRA adapter into a model's weights and saves the result as a model that
/// needs no adapter (like mlx_lm.fuse): a Hugging Face directory becomes a directory with
/// one model.safetensors and the same config and tokenizer files; a GGUF file becomes a
/// GGUF file whose merged matrices are f32 and whose other tensors and metadata are copied.
public enum Fuse {
    public struct FuseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Returns how many matrices were merged.
    @discardableResult
    public static func fuse(model path: String, adapter adapterPath: String, output: String,
                            dtype: SafetensorsWriter.DType = .f32) throws -> Int {
        try BLAS.load()
        let fm = FileManager.default
        guard !fm.fileExists(atPath: output) else { throw FuseError(description: "\(output): already exists; choose a new path") }
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else { throw ModelFileError(path, "no such file or directory") }
        if isDir.boolValue {
            let config = try QwenConfig.fromHuggingFace(path: (path as NSString).appendingPathComponent("config.json"))
            let source = try SafetensorsDirectory(directory: path)
            let weights = try QwenWeights(config: config, source: source, f32Copies: false)
            let adapter = try LoRAAdapter.load(path: adapterPath, config: config)
            let merged = adapter.fusedTensors(into: weights)
            // Build the directory under a temporary name, then rename it into place.
            let tmp = output + ".tmp-\(getpid())"
            try? fm.removeItem(atPath: tmp)
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            do {
                for f in try fm.contentsOfDirectory(atPath: path).sorted()
                where !f.hasSuffix(".safetensors") && f != "model.safetensors.index.json" && !f.hasPrefix(".") {
                    var sub: ObjCBool = false
                    let from = (path as NSString).appendingPathComponent(f)
                    if fm.fileExists(atPath: from, isDirectory: &sub), !sub.boolValue {
                        try fm.copyItem(atPath: from, toPath: (tmp as NSString).appendingPathComponent(f))
                    }
                }
                let tensors = source.tensorNames.map { name in
                    SafetensorsWriter.Tensor(name: name, shape: source.shape(of: name)!) { try merged[name] ?? source.floats(name) }
                }
                try SafetensorsWriter.write(tensors, dtype: dtype, to: (tmp as NSString).appendingPathComponent("model.safetensors"))
                guard rename(tmp, output) == 0 else { throw FuseError(description: "\(output): cannot rename into place") }
            } catch {
                try? fm.removeItem(atPath: tmp)
                throw error
            }
            return merged.count
        }
        let gguf = try GGUFFile(path: path)
        let config = try QwenConfig.fromGGUF(gguf)
        let weights = try QwenWeights(config: config, source: gguf, f32Copies: false)
        let adapter = try LoRAAdapter.load(path: adapterPath, config: config)
        let merged = adapter.fusedTensors(into: weights)
        try GGUFWriter.rewrite(gguf, replacing: merged, to: output)
        return merged.count
    }
}
