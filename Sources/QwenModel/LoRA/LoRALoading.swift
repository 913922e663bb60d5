import Foundation
import QwenFormats
import QwenKernels

/// Reads adapters in the two formats labs have: PEFT (`adapter_config.json` +
/// `adapter_model.safetensors`, A [r × in] and B [out × r], scale alpha / r or
/// alpha / √r with rsLoRA) and mlx-lm (`adapter_config.json` + `adapters.safetensors`,
/// lora_a [in × r] and lora_b [r × out], one `scale`). Every tensor must fit the base
/// model; anything else is refused with the file and the reason.
extension LoRAAdapter {
    public static func load(path: String, config: QwenConfig) throws -> LoRAAdapter {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        let dir = path as NSString
        let configPath = dir.appendingPathComponent("adapter_config.json")
        // One answer for a path that is missing, not a directory, or has no config, so the
        // adapter routes do not tell callers which server paths exist. A config that is there
        // but unusable (too large, not a regular file) gets its own error.
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue, fm.fileExists(atPath: configPath) else {
            throw ModelFileError(path, "is not an adapter directory this server can read (a directory with adapter_config.json and adapter_model.safetensors or adapters.safetensors)")
        }
        let data = try SafeFile.read(configPath, maxBytes: maxConfigBytes)
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFileError(configPath, "not a JSON object")
        }
        let peft = dir.appendingPathComponent("adapter_model.safetensors")
        let mlx = dir.appendingPathComponent("adapters.safetensors")
        if fm.fileExists(atPath: peft) {
            return try loadPEFT(dir: path, configPath: configPath, json: json, weights: peft, config: config)
        }
        if fm.fileExists(atPath: mlx) {
            return try loadMLX(dir: path, configPath: configPath, json: json, weights: mlx, config: config)
        }
        if fm.fileExists(atPath: dir.appendingPathComponent("adapter_model.bin")) {
            throw ModelFileError(path, "adapter_model.bin is a pickle file, which is not read; save the adapter with safetensors (PEFT's default)")
        }
        throw ModelFileError(path, "no adapter_model.safetensors (PEFT) or adapters.safetensors (mlx-lm)")
    }

    /// adapter_config.json is a few hundred bytes; anything past 1 MiB is not one.
    static let maxConfigBytes = 1 << 20
    /// Scales past this are not a LoRA (PEFT's alpha/r and mlx-lm's scale are 0.1–100).
    static let maxScale = 10_000.0

    /// A scale that is finite, not absurd, and stays finite in f32.
    static func checkedScale(_ s: Double, _ what: String, file: String) throws -> Float {
        guard s.isFinite, abs(s) <= maxScale else {
            throw ModelFileError(file, "\(what) gives a scale of \(s); it must be a finite number of magnitude at most \(Int(maxScale))")
        }
        return Float(s)
    }

    /// A tensor's values, refused when any is NaN or infinite (they would make every answer garbage).
    static func finiteFloats(_ file: SafetensorsFile, _ name: String) throws -> FloatBuffer {
        let b = try file.floats(name)
        for i in 0..<b.count where !b[i].isFinite {
            throw ModelFileError(file.origin, "tensor \(name) holds a non-finite value (NaN or infinity) at element \(i)")
        }
        return b
    }

    // MARK: PEFT

    static func loadPEFT(dir: String, configPath: String, json: [String: Any], weights: String, config c: QwenConfig) throws -> LoRAAdapter {
        func fail(_ m: String) -> ModelFileError { ModelFileError(configPath, m) }
        if let t = json["peft_type"] as? String, t.uppercased() != "LORA" { throw fail("peft_type is \(t); only LORA adapters are served") }
        if json["use_dora"] as? Bool == true { throw fail("use_dora is true; DoRA adapters are not supported") }
        if json["fan_in_fan_out"] as? Bool == true { throw fail("fan_in_fan_out is true, which Qwen's Linear layers never use") }
        if json["lora_bias"] as? Bool == true { throw fail("lora_bias is true; adapters with bias terms are not supported") }
        if let b = json["bias"] as? String, b != "none" { throw fail("bias is \"\(b)\"; only \"none\" is supported") }
        if let m = json["modules_to_save"] as? [Any], !m.isEmpty {
            throw fail("modules_to_save lists \(m.map { "\($0)" }); adapters that replace whole modules are not supported")
        }
        guard let r = (json["r"] as? NSNumber)?.intValue, r > 0 else { throw fail("r (the rank) is missing or not a positive integer") }
        guard let alpha = (json["lora_alpha"] as? NSNumber)?.doubleValue, alpha.isFinite else {
            throw fail("lora_alpha is missing or not a finite number")
        }
        let rslora = json["use_rslora"] as? Bool ?? false
        let rankPattern = (json["rank_pattern"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.intValue }
        let alphaPattern = (json["alpha_pattern"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }

        let file = try SafetensorsFile(path: weights)
        var pairs: [Key: (a: String?, b: String?)] = [:]
        for name in file.tensorNames {
            var n = name
            if n.hasPrefix("base_model.model.") { n.removeFirst("base_model.model.".count) }
            let parts = n.split(separator: ".").map(String.init)
            // model.layers.N.<self_attn|mlp>.<proj>.lora_<A|B>[.<adapter name>].weight
            guard parts.count >= 7, parts.last == "weight", let which = parts.firstIndex(where: { $0 == "lora_A" || $0 == "lora_B" }),
                  which == 5 else {
                throw ModelFileError(weights, "tensor \(name) is not a LoRA A/B weight of a decoder projection (embedding, lm_head and other modules are not supported)")
            }
            let key = try moduleKey(parts[0..<5], tensor: name, file: weights, config: c)
            if parts[5] == "lora_A" { pairs[key, default: (nil, nil)].a = name } else { pairs[key, default: (nil, nil)].b = name }
        }
        var updates = emptyUpdates(c)
        for (key, pair) in pairs.sorted(by: { ($0.key.layer, $0.key.projection.rawValue) < ($1.key.layer, $1.key.projection.rawValue) }) {
            guard let an = pair.a, let bn = pair.b else {
                throw ModelFileError(weights, "\(key.name) has only one of lora_A and lora_B")
            }
            let (outDim, inDim) = key.projection.shape(c)
            guard let sa = file.shape(of: an), sa.count == 2, sa[1] == inDim, sa[0] > 0 else {
                throw ModelFileError(weights, "\(an) has shape \(file.shape(of: an) ?? []), expected [rank, \(inDim)] for this base model")
            }
            let rank = sa[0]
            guard file.shape(of: bn) == [outDim, rank] else {
                throw ModelFileError(weights, "\(bn) has shape \(file.shape(of: bn) ?? []), expected [\(outDim), \(rank)] for this base model")
            }
            let moduleName = key.name
            let declaredRank = patternValue(rankPattern, moduleName) ?? r
            guard declaredRank == rank else {
                throw ModelFileError(weights, "\(moduleName) has rank \(rank) but adapter_config.json says \(declaredRank)")
            }
            let a = patternValue(alphaPattern, moduleName) ?? alpha
            let scale = rslora ? a / Double(rank).squareRoot() : a / Double(rank)
            updates[key.layer][key.projection.rawValue] = LoRAUpdate(
                a: try finiteFloats(file, an), b: try finiteFloats(file, bn), rank: rank,
                scale: try checkedScale(scale, "lora_alpha \(a) with rank \(rank)", file: configPath))
        }
        guard !pairs.isEmpty else { throw ModelFileError(weights, "holds no LoRA weights") }
        return LoRAAdapter(updates: updates, path: dir, format: "peft")
    }

    /// PEFT's rule for rank_pattern / alpha_pattern: a key matches a module whose name is
    /// the key or ends with "." + key (keys may be regular expressions).
    static func patternValue<T>(_ patterns: [String: T], _ module: String) -> T? {
        for (key, value) in patterns.sorted(by: { $0.key < $1.key }) {
            if module == key || module.hasSuffix("." + key) { return value }
            if let re = try? NSRegularExpression(pattern: "^(.*\\.)?(\(key))$"),
               re.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil {
                return value
            }
        }
        return nil
    }

    // MARK: mlx-lm

    static func loadMLX(dir: String, configPath: String, json: [String: Any], weights: String, config c: QwenConfig) throws -> LoRAAdapter {
        func fail(_ m: String) -> ModelFileError { ModelFileError(configPath, m) }
        let kind = json["fine_tune_type"] as? String ?? "lora"
        guard kind == "lora" else { throw fail("fine_tune_type is \(kind); only lora adapters are served (fuse a \(kind) run instead)") }
        guard let params = json["lora_parameters"] as? [String: Any] else { throw fail("lora_parameters is missing") }
        guard let rank = (params["rank"] as? NSNumber)?.intValue, rank > 0 else { throw fail("lora_parameters.rank is missing or not positive") }
        // mlx-lm's LoRALinear default when a config leaves it out.
        let scale = try checkedScale((params["scale"] as? NSNumber)?.doubleValue ?? 20.0, "lora_parameters.scale", file: configPath)

        let file = try SafetensorsFile(path: weights)
        var pairs: [Key: (a: String?, b: String?)] = [:]
        for name in file.tensorNames {
            let parts = name.split(separator: ".").map(String.init)
            // model.layers.N.<self_attn|mlp>.<proj>.lora_<a|b>
            guard parts.count == 6, parts[5] == "lora_a" || parts[5] == "lora_b" else {
                throw ModelFileError(weights, "tensor \(name) is not a lora_a/lora_b of a decoder projection (DoRA magnitudes and other modules are not supported)")
            }
            let key = try moduleKey(parts[0..<5], tensor: name, file: weights, config: c)
            if parts[5] == "lora_a" { pairs[key, default: (nil, nil)].a = name } else { pairs[key, default: (nil, nil)].b = name }
        }
        var updates = emptyUpdates(c)
        for (key, pair) in pairs.sorted(by: { ($0.key.layer, $0.key.projection.rawValue) < ($1.key.layer, $1.key.projection.rawValue) }) {
            guard let an = pair.a, let bn = pair.b else { throw ModelFileError(weights, "\(key.name) has only one of lora_a and lora_b") }
            let (outDim, inDim) = key.projection.shape(c)
            guard file.shape(of: an) == [inDim, rank] else {
                throw ModelFileError(weights, "\(an) has shape \(file.shape(of: an) ?? []), expected [\(inDim), \(rank)] for this base model and rank")
            }
            guard file.shape(of: bn) == [rank, outDim] else {
                throw ModelFileError(weights, "\(bn) has shape \(file.shape(of: bn) ?? []), expected [\(rank), \(outDim)] for this base model and rank")
            }
            updates[key.layer][key.projection.rawValue] = LoRAUpdate(
                a: transpose(try finiteFloats(file, an), rows: inDim, cols: rank),
                b: transpose(try finiteFloats(file, bn), rows: rank, cols: outDim), rank: rank, scale: scale)
        }
        guard !pairs.isEmpty else { throw ModelFileError(weights, "holds no LoRA weights") }
        return LoRAAdapter(updates: updates, path: dir, format: "mlx")
    }

    // MARK: shared

    struct Key: Hashable {
        let layer: Int
        let projection: Projection
        var name: String { "model.layers.\(layer).\(projection.module)" }
    }

    /// Parses `model.layers.N.<group>.<proj>` and checks it exists in the base model.
    static func moduleKey(_ p: ArraySlice<String>, tensor: String, file: String, config c: QwenConfig) throws -> Key {
        let parts = Array(p)
        guard parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]) else {
            throw ModelFileError(file, "tensor \(tensor) does not belong to a decoder layer")
        }
        guard layer >= 0, layer < c.layers else {
            throw ModelFileError(file, "tensor \(tensor) is for layer \(layer), but the base model has \(c.layers) layers")
        }
        guard let proj = Projection(module: parts[3] + "." + parts[4]) else {
            throw ModelFileError(file, "tensor \(tensor) targets \(parts[3]).\(parts[4]), which is not a projection of a Qwen block")
        }
        return Key(layer: layer, projection: proj)
    }

    static func emptyUpdates(_ c: QwenConfig) -> [[LoRAUpdate?]] {
        Array(repeating: Array(repeating: nil, count: Projection.allCases.count), count: c.layers)
    }

    static func transpose(_ m: FloatBuffer, rows: Int, cols: Int) -> FloatBuffer {
        precondition(rows * cols == m.count, "transpose of a buffer whose size is not rows × cols")
        let t = FloatBuffer(count: m.count)
        for i in 0..<rows { for j in 0..<cols { t[j * rows + i] = m[i * cols + j] } }
        return t
    }
}
