import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenTokenizer

/// A model ready to run: weights, tokenizer and the name clients call it by.
public final class LoadedModel {
    public let name: String
    public let path: String
    public let model: QwenModel
    public let tokenizer: Tokenizer

    public init(name: String, path: String, model: QwenModel, tokenizer: Tokenizer) {
        self.name = name
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Loads a Hugging Face directory or a GGUF file from disk.
    public static func load(path: String, name: String? = nil) throws -> LoadedModel {
        try BLAS.load()
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelFileError(path, "no such file or directory")
        }
        let displayName = name ?? URL(fileURLWithPath: path).lastPathComponent
        if isDir.boolValue {
            let config = try QwenConfig.fromHuggingFace(path: (path as NSString).appendingPathComponent("config.json"))
            let source = try SafetensorsDirectory(directory: path)
            let tokenizer = try Tokenizer.load(directory: path)
            let model = try QwenModel(config: config, source: source)
            return LoadedModel(name: displayName, path: path, model: model, tokenizer: tokenizer)
        }
        let gguf = try GGUFFile(path: path)
        let config = try QwenConfig.fromGGUF(gguf)
        let tokenizer = try Tokenizer.load(gguf: gguf)
        let model = try QwenModel(config: config, source: gguf)
        return LoadedModel(name: displayName.hasSuffix(".gguf") ? String(displayName.dropLast(5)) : displayName,
                           path: path, model: model, tokenizer: tokenizer)
    }
}
