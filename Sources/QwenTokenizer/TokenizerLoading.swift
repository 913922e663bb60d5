import Foundation
import QwenFormats

extension Tokenizer {
    /// Loads `tokenizer.json` (and, when present beside it, `tokenizer_config.json` for the
    /// chat template and `config.json`/`generation_config.json` for end-of-sequence ids).
    /// Only Qwen's pipeline is accepted; anything else is refused by name rather than
    /// tokenised differently from the reference.
    public static func load(directory: String) throws -> Tokenizer {
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        let obj = try readJSON(path)
        guard let model = obj["model"] as? [String: Any] else { throw ModelFileError(path, "no model object") }
        guard (model["type"] as? String) == "BPE" else {
            throw ModelFileError(path, "unsupported tokenizer model \(model["type"] ?? "(none)") (only BPE)")
        }
        try checkPipeline(obj, path)
        guard let v = model["vocab"] as? [String: Any] else { throw ModelFileError(path, "no model.vocab object") }
        var vocab: [String: Int32] = [:]
        vocab.reserveCapacity(v.count)
        for (k, val) in v {
            guard let n = val as? NSNumber else { throw ModelFileError(path, "vocab entry \(k) is not a number") }
            vocab[k] = n.int32Value
        }
        var merges: [(String, String)] = []
        for (i, m) in ((model["merges"] as? [Any]) ?? []).enumerated() {
            if let s = m as? String {
                let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw ModelFileError(path, "merge \(i) is not two tokens") }
                merges.append((String(parts[0]), String(parts[1])))
            } else if let p = m as? [String], p.count == 2 {
                merges.append((p[0], p[1]))
            } else {
                throw ModelFileError(path, "merge \(i) is neither \"a b\" nor [a, b]")
            }
        }
        var added: [AddedToken] = []
        for a in (obj["added_tokens"] as? [[String: Any]]) ?? [] {
            guard let id = (a["id"] as? NSNumber)?.int32Value, let content = a["content"] as? String else {
                throw ModelFileError(path, "an added token lacks id or content")
            }
            added.append(AddedToken(id: id, content: content, special: (a["special"] as? NSNumber)?.boolValue ?? false))
        }

        // Chat template and special tokens from tokenizer_config.json; eos from the model's configs.
        let tcPath = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        let tc = FileManager.default.fileExists(atPath: tcPath) ? try readJSON(tcPath) : [:]
        var template = tc["chat_template"] as? String
        if template == nil, let list = tc["chat_template"] as? [[String: Any]] {
            template = list.first { ($0["name"] as? String) == "default" }?["template"] as? String
        }
        let jinjaPath = (directory as NSString).appendingPathComponent("chat_template.jinja")
        if template == nil, FileManager.default.fileExists(atPath: jinjaPath), let data = try? SafeFile.read(jinjaPath, maxBytes: 1 << 20) {
            template = String(decoding: data, as: UTF8.self)
        }
        func tokenId(_ key: String) -> Int32? {
            var content = tc[key] as? String
            if content == nil, let d = tc[key] as? [String: Any] { content = d["content"] as? String }
            guard let c = content else { return nil }
            return added.first { $0.content == c }?.id ?? vocab[c]
        }
        var eos = Set<Int32>()
        if let e = tokenId("eos_token") { eos.insert(e) }
        for name in ["generation_config.json", "config.json"] {
            let p = (directory as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: p) else { continue }
            let c = try readJSON(p)
            if let n = c["eos_token_id"] as? NSNumber { eos.insert(n.int32Value) }
            if let l = c["eos_token_id"] as? [NSNumber] { eos.formUnion(l.map(\.int32Value)) }
        }
        do {
            return try Tokenizer(origin: path, vocab: vocab, merges: merges, added: added, eos: eos,
                                 bos: tokenId("bos_token"), pad: tokenId("pad_token"), chatTemplate: template)
        } catch let e as TokenizerError {
            throw ModelFileError(path, e.description)
        }
    }

    /// Loads the vocabulary, merges, special ids and chat template stored in a GGUF file.
    public static func load(gguf g: GGUFFile) throws -> Tokenizer {
        let path = g.origin
        guard g.metadata["tokenizer.ggml.model"]?.string == "gpt2" else {
            throw ModelFileError(path, "unsupported tokenizer model \(g.metadata["tokenizer.ggml.model"]?.string ?? "(none)") (only gpt2-style byte-level BPE)")
        }
        if let pre = g.metadata["tokenizer.ggml.pre"]?.string, !["qwen2", "qwen3", "qwen35"].contains(pre) {
            throw ModelFileError(path, "unsupported pre-tokenizer \(pre) (Qwen's is supported)")
        }
        guard let tokens = g.metadata["tokenizer.ggml.tokens"]?.array else { throw ModelFileError(path, "missing tokenizer.ggml.tokens") }
        let types = g.metadata["tokenizer.ggml.token_type"]?.array ?? []
        var vocab: [String: Int32] = [:]
        vocab.reserveCapacity(tokens.count)
        var added: [AddedToken] = []
        for (i, t) in tokens.enumerated() {
            guard let s = t.string else { throw ModelFileError(path, "token \(i) is not a string") }
            let type = i < types.count ? (types[i].int ?? 1) : 1
            switch type {
            case 3, 4: added.append(AddedToken(id: Int32(i), content: s, special: type == 3))
            case 5: continue  // unused: an embedding row past the vocabulary ("[PAD151700]"), no text
            default: vocab[s] = Int32(i)
            }
        }
        var merges: [(String, String)] = []
        for (i, m) in (g.metadata["tokenizer.ggml.merges"]?.array ?? []).enumerated() {
            guard let s = m.string else { throw ModelFileError(path, "merge \(i) is not a string") }
            let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw ModelFileError(path, "merge \(i) is not two tokens") }
            merges.append((String(parts[0]), String(parts[1])))
        }
        func id(_ k: String) -> Int32? { g.metadata["tokenizer.ggml.\(k)"]?.int.map { Int32($0) } }
        var eos = Set<Int32>()
        if let e = id("eos_token_id") { eos.insert(e) }
        // Chat models end a turn with <|im_end|>; base models with <|endoftext|>. Both stop generation.
        for name in ["<|im_end|>", "<|endoftext|>"] {
            if let a = added.first(where: { $0.content == name }) { eos.insert(a.id) }
        }
        do {
            return try Tokenizer(origin: path, vocab: vocab, merges: merges, added: added, eos: eos,
                                 bos: id("bos_token_id"), pad: id("padding_token_id"),
                                 chatTemplate: g.metadata["tokenizer.chat_template"]?.string)
        } catch let e as TokenizerError {
            throw ModelFileError(path, e.description)
        }
    }

    static func readJSON(_ path: String) throws -> [String: Any] {
        let data = try SafeFile.read(path, maxBytes: 256 << 20)
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFileError(path, "not a valid JSON object")
        }
        return obj
    }

    /// Accepts only the normaliser, pre-tokenizer and decoder that Qwen ships.
    static func checkPipeline(_ obj: [String: Any], _ path: String) throws {
        if let n = obj["normalizer"] as? [String: Any], (n["type"] as? String) != "NFC" {
            throw ModelFileError(path, "unsupported normalizer \(n["type"] ?? "?") (Qwen's NFC is supported)")
        }
        guard let pre = obj["pre_tokenizer"] as? [String: Any] else { throw ModelFileError(path, "no pre_tokenizer") }
        let steps = (pre["type"] as? String) == "Sequence" ? (pre["pretokenizers"] as? [[String: Any]] ?? []) : [pre]
        var sawSplit = false, sawByteLevel = false
        for step in steps {
            switch step["type"] as? String {
            case "Split":
                let pattern = (step["pattern"] as? [String: Any])?["Regex"] as? String
                guard pattern == QwenPreTokenizer.pattern else {
                    throw ModelFileError(path, "unsupported pre-tokenizer split pattern (Qwen's is supported)")
                }
                sawSplit = true
            case "ByteLevel":
                if (step["use_regex"] as? NSNumber)?.boolValue == true || (step["add_prefix_space"] as? NSNumber)?.boolValue == true {
                    throw ModelFileError(path, "unsupported ByteLevel options (use_regex and add_prefix_space must be false)")
                }
                sawByteLevel = true
            default:
                throw ModelFileError(path, "unsupported pre-tokenizer step \(step["type"] ?? "?")")
            }
        }
        guard sawSplit, sawByteLevel else { throw ModelFileError(path, "pre-tokenizer is not Qwen's Split + ByteLevel") }
    }
}
