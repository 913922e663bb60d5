import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenTokenizer

/// `qwen-serve quantize`: a Hugging Face checkpoint (safetensors in bf16/f16/f32), or a GGUF with
/// float matrices, written as a quantized GGUF that this server and llama.cpp load — the weights
/// `--quantize` would make at load (QuantizedSource), the hyper-parameters under llama.cpp's
/// `qwen2`/`qwen3` keys, the tokenizer as `tokenizer.ggml.*` arrays and the chat template (a
/// GGUF's metadata is copied instead). Tensors are quantized and written one at a time, so
/// memory stays near one tensor's size; the file is written atomically and then loaded back as
/// a model before this returns.
public enum GGUFExport {
    public struct Summary {
        public let tensors: Int
        public let quantized: Int
        public let bytes: Int
    }

    struct ExportError: Error, CustomStringConvertible { let description: String }

    /// `model`: a Hugging Face directory, or a GGUF file whose matrices are float (f32/f16/bf16;
    /// its metadata is copied, with the new file type).
    public static func quantize(model: String, type: QuantizeType, to output: String, name: String? = nil) throws -> Summary {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: model, isDirectory: &isDir) else { throw ModelFileError(model, "no such file or directory") }
        guard !fm.fileExists(atPath: output) else { throw ExportError(description: "\(output): already exists; choose a new path") }
        let metadata: [(String, GGUFWriter.Value)]
        let source: QuantizedSource
        var keepAlive: AnyObject? = nil
        if isDir.boolValue {
            let config = try QwenConfig.fromHuggingFace(path: (model as NSString).appendingPathComponent("config.json"))
            let tokenizer = try Tokenizer.load(directory: model)
            source = QuantizedSource(try SafetensorsDirectory(directory: model), type: type)
            guard let vocabulary = tokenizer.ggufVocabulary(size: config.vocabSize) else {
                throw ModelFileError(model, "the tokenizer has \(tokenizer.vocabularySize) tokens, more than vocab_size \(config.vocabSize)")
            }
            metadata = try self.metadata(config, tokenizer, vocabulary, type: type,
                                         name: name ?? URL(fileURLWithPath: model).lastPathComponent, origin: model)
        } else {
            let g = try GGUFFile(path: model)
            _ = try QwenConfig.fromGGUF(g)  // a qwen2/qwen3 file, or refused by name
            guard g.tensors.values.contains(where: { $0.dims.count == 2 && [.f32, .f16, .bf16].contains($0.type) }) else {
                throw ModelFileError(model, "has no float matrices to quantize (its weights are already quantized blocks)")
            }
            source = QuantizedSource(g, type: type)
            keepAlive = g
            metadata = copiedMetadata(g, type: type, name: name)
        }
        var tensors: [GGUFWriter.Tensor] = []
        var quantized = 0
        for hf in order(source.tensorNames) {
            // A GGUF input's tensors keep their own names.
            guard let gguf = GGUFFile.ggufName(hf) ?? (keepAlive as? GGUFFile)?.tensors[hf]?.ggufName else {
                if hf.hasSuffix("rotary_emb.inv_freq") { continue }  // a buffer older checkpoints saved, recomputed at load
                throw ModelFileError(model, "tensor \(hf) has no place in a qwen2/qwen3 GGUF")
            }
            let shape = source.shape(of: hf)!
            let dims = Array(shape.reversed())
            if let (t, bytes) = try source.quantizedLayout(hf) {
                quantized += 1
                tensors.append(.init(name: gguf, type: UInt32(t), dims: dims, byteCount: bytes) { try source.quantizedBytes(hf) })
            } else if let g = keepAlive as? GGUFFile, let t = g.tensors[hf] {
                // Already in blocks (or a vector): copied as stored.
                tensors.append(.init(name: gguf, type: t.type.rawValue, dims: t.dims, byteCount: t.byteCount) {
                    (UnsafeRawBufferPointer(start: g.file.base + t.offset, count: t.byteCount), g.file)
                })
            } else {
                var count = 1
                for d in shape {
                    let (c, o) = count.multipliedReportingOverflow(by: d)
                    guard !o, d >= 0 else { throw ModelFileError(model, "tensor \(hf) is too large") }
                    count = c
                }
                let (bytes, o) = count.multipliedReportingOverflow(by: 4)
                guard !o else { throw ModelFileError(model, "tensor \(hf) is too large") }
                tensors.append(.init(name: gguf, type: 0, dims: dims, byteCount: bytes) {
                    let v = try source.floats(hf)
                    return (UnsafeRawBufferPointer(start: v.pointer, count: v.count * 4), v)
                })
            }
        }
        try GGUFWriter.write(metadata: metadata, tensors: tensors, to: output)
        do {
            // What serving checks (every tensor, its shape, the tokenizer) on the written file.
            _ = try LoadedModel.load(path: output, f32Weights: .no, choice: .f32)
        } catch {
            try? fm.removeItem(atPath: output)
            throw ExportError(description: "\(output): the written file did not load back, so it was removed: \(error)")
        }
        let size = (try? fm.attributesOfItem(atPath: output))?[.size] as? Int ?? 0
        return withExtendedLifetime(keepAlive) { Summary(tensors: tensors.count, quantized: quantized, bytes: size) }
    }

    /// A GGUF's metadata copied entry by entry, with this file's type and name (and no alignment
    /// key: the writer aligns to 32).
    static func copiedMetadata(_ g: GGUFFile, type: QuantizeType, name: String?) -> [(String, GGUFWriter.Value)] {
        let replaced: Set<String> = ["general.file_type", "general.quantization_version", "general.alignment"]
        var m: [(String, GGUFWriter.Value)] = []
        for e in g.storedMetadata where !replaced.contains(e.key) && !(name != nil && e.key == "general.name") {
            m.append((e.key, .stored(type: e.type, bytes: UnsafeRawBufferPointer(start: g.file.base + e.value.lowerBound, count: e.value.count))))
        }
        if let name { m.append(("general.name", .string(name))) }
        m += [("general.file_type", .u32(fileType(type))), ("general.quantization_version", .u32(2))]
        return m
    }

    /// Embedding first, then the layers in order, then the final norm and head (llama.cpp's order).
    static func order(_ names: [String]) -> [String] {
        func key(_ n: String) -> (Int, Int, String) {
            if n == "model.embed_tokens.weight" { return (0, 0, n) }
            if n.hasPrefix("model.layers.") {
                let layer = Int(n.dropFirst("model.layers.".count).prefix { $0 != "." }) ?? 0
                return (1, layer, n)
            }
            return (2, 0, n)
        }
        return names.sorted { key($0) < key($1) }
    }

    /// llama.cpp's `general.file_type` for a file mostly of `type` (Q4_K without mixed types is its Q4_K_S).
    static func fileType(_ type: QuantizeType) -> UInt32 {
        switch type {
        case .q8_0: return 7
        case .q4_0: return 2
        case .q4_k: return 14
        }
    }

    static func metadata(_ c: QwenConfig, _ tok: Tokenizer, _ vocab: GGUFVocabulary, type: QuantizeType,
                         name: String, origin: String) throws -> [(String, GGUFWriter.Value)] {
        func u32(_ v: Int, _ what: String) throws -> GGUFWriter.Value {
            guard let x = UInt32(exactly: v) else { throw ModelFileError(origin, "\(what) (\(v)) does not fit a GGUF u32") }
            return .u32(x)
        }
        let a = c.architecture.rawValue
        var m: [(String, GGUFWriter.Value)] = [
            ("general.architecture", .string(a)),
            ("general.name", .string(name)),
            ("general.file_type", .u32(fileType(type))),
            ("general.quantization_version", .u32(2)),
            ("\(a).block_count", try u32(c.layers, "num_hidden_layers")),
            ("\(a).context_length", try u32(c.maxPositions, "max_position_embeddings")),
            ("\(a).embedding_length", try u32(c.hiddenSize, "hidden_size")),
            ("\(a).feed_forward_length", try u32(c.intermediateSize, "intermediate_size")),
            ("\(a).attention.head_count", try u32(c.heads, "num_attention_heads")),
            ("\(a).attention.head_count_kv", try u32(c.kvHeads, "num_key_value_heads")),
            ("\(a).attention.key_length", try u32(c.headDim, "head_dim")),
            ("\(a).attention.value_length", try u32(c.headDim, "head_dim")),
            ("\(a).rope.freq_base", .f32(c.ropeTheta)),
            ("\(a).attention.layer_norm_rms_epsilon", .f32(c.rmsNormEps)),
        ]
        if c.ropeLinearFactor != 1 {
            m += [("\(a).rope.scaling.type", .string("linear")), ("\(a).rope.scaling.factor", .f32(c.ropeLinearFactor))]
        }
        m += [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string("qwen2")),
            ("tokenizer.ggml.tokens", .strings(vocab.tokens)),
            ("tokenizer.ggml.token_type", .i32s(vocab.types)),
            ("tokenizer.ggml.merges", .strings(vocab.merges)),
        ]
        // One end-of-sequence id (GGUF has one key): a chat model's <|im_end|> when it is among
        // the checkpoint's, else the lowest. Loaders add <|im_end|> and <|endoftext|> themselves.
        func valid(_ id: Int32?) -> UInt32? { id.flatMap { $0 >= 0 && Int($0) < vocab.tokens.count ? UInt32($0) : nil } }
        let eosIds = tok.eosTokenIds.compactMap(valid)
        let imEnd = valid(tok.id(of: "<|im_end|>"))
        if let eos = imEnd.flatMap({ eosIds.contains($0) ? $0 : nil }) ?? eosIds.min() {
            m.append(("tokenizer.ggml.eos_token_id", .u32(eos)))
        }
        if let pad = valid(tok.padTokenId) { m.append(("tokenizer.ggml.padding_token_id", .u32(pad))) }
        if let bos = valid(tok.bosTokenId) { m.append(("tokenizer.ggml.bos_token_id", .u32(bos))) }
        m.append(("tokenizer.ggml.add_bos_token", .bool(false)))
        if let t = tok.chatTemplate { m.append(("tokenizer.chat_template", .string(t))) }
        return m
    }
}
