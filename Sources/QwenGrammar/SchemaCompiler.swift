import QwenChat

/// Compiles JSON Schemas (and the other output constraints a request can ask for) into one
/// grammar. What it produces always validates against the schema; where validation allows
/// more than is generated, it is a deliberate narrowing:
/// - object properties come in the schema's order, required ones always, optional ones
///   may be left out; properties a schema does not declare are never generated (so
///   `additionalProperties` only matters for an object without `properties`, where its schema
///   is every value's);
/// - numbers are written without exponents, with at most 15 integer and 12 fraction digits;
/// - whitespace between tokens is bounded (nothing, one space, or a newline and up to 20
///   spaces or tabs), so a model cannot loop on newlines;
/// - a `pattern` must match the whole string (JSON Schema's search semantics allow more).
/// Anything else it cannot honour exactly is refused with the keyword named.
public struct SchemaCompiler {
    public struct Refusal: Error, CustomStringConvertible {
        /// The JSON pointer of the offending keyword or value within the schema.
        public let path: String
        public let message: String
        public var description: String { path.isEmpty ? message : "\(path): \(message)" }
    }

    var b: GrammarBuilder = {
        var b = GrammarBuilder()
        b.limit = 100_000
        return b
    }()
    /// The document `$ref`s resolve against.
    var document: JSONValue = .object([])
    var documentKey = 0
    var refs: [String: Int] = [:]
    var depth = 0
    var cache: [String: Int] = [:]

    static let maxDepth = 64

    public init() {}

    /// Keywords that say nothing about which values are valid.
    static let annotations: Set<String> = ["title", "description", "default", "examples", "$comment", "$schema", "$id",
                                           "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "$anchor"]
    static let handled: Set<String> = ["type", "enum", "const", "anyOf", "allOf", "$ref", "properties", "required",
                                       "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength",
                                       "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                       "minProperties", "maxProperties", "uniqueItems", "strict"]

    // MARK: Entry points

    /// A grammar for one JSON value valid against `schema`.
    public static func grammar(schema: JSONValue) throws -> Grammar {
        var c = SchemaCompiler()
        let root = try c.root(schema)
        return try c.finish(root)
    }

    /// A grammar for any JSON object (`response_format: json_object`).
    public static func anyObject() throws -> Grammar {
        var c = SchemaCompiler()
        let root = try c.mapObject(values: try c.anyValue(), min: 0, max: nil)
        return try c.finish(root)
    }

    /// Plain text matching a regular expression.
    public static func regex(_ pattern: String) throws -> Grammar {
        var c = SchemaCompiler()
        do {
            let root = try RegexCompiler.compile(pattern, into: &c.b, raw: true)
            return try c.finish(root)
        } catch let e as RegexCompiler.Failure { throw Refusal(path: "", message: e.description) }
    }

    /// Exactly one of `choices`, as plain text.
    public static func choice(_ choices: [String]) throws -> Grammar {
        var c = SchemaCompiler()
        let root = try c.trie(choices.map { Array($0.utf8) })
        return try c.finish(root)
    }

    public struct Tool {
        public let name: String
        public let parameters: JSONValue?
        public init(name: String, parameters: JSONValue?) {
            self.name = name
            self.parameters = parameters
        }

        /// From a request's `{"type": "function", "function": {"name", "parameters"}}`; nil without a name.
        public init?(openAI v: JSONValue) {
            guard let name = v["function"]?["name"]?.string else { return nil }
            self.init(name: name, parameters: v["function"]?["parameters"])
        }
    }

    /// Tool calls in Qwen's format, `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`,
    /// calling one of `tools` with arguments valid against its parameters; several calls
    /// (separated by a newline) when `parallel`.
    public static func toolCalls(_ tools: [Tool], parallel: Bool) throws -> Grammar {
        var c = SchemaCompiler()
        var calls: [Int] = []
        for (k, t) in tools.enumerated() {
            let name = JSONValue.string(t.name).compact
            let args: Int
            do {
                args = try c.root(t.parameters ?? .object([("type", .string("object"))]), key: k + 1)
            } catch let r as Refusal {
                throw Refusal(path: "tools[\(k)].function.parameters" + r.path.dropFirst(), message: r.message)
            }
            calls.append(try c.b.seq([try c.b.literal("{\"name\": \(name), \"arguments\": "), args, try c.b.literal("}")]))
        }
        let one = try c.b.seq([try c.b.literal("<tool_call>\n"), try c.b.alt(calls), try c.b.literal("\n</tool_call>")])
        let root = parallel ? try c.b.seq([one, try c.b.add(.rep(try c.b.seq([try c.b.literal("\n"), one]), min: 0, max: nil))]) : one
        return try c.finish(root)
    }

    mutating func finish(_ root: Int) throws -> Grammar {
        let g = b.build(root: root)
        guard !Matcher(g).start.isDead else { throw Refusal(path: "", message: "the schema allows no value at all") }
        return g
    }

    mutating func root(_ schema: JSONValue, key: Int = 0) throws -> Int {
        document = schema
        documentKey = key
        do { return try value(schema, "#") } catch is GrammarBuilder.TooLarge {
            throw Refusal(path: "", message: "the schema is too large to compile (over \(b.limit) grammar nodes)")
        }
    }

    // MARK: Shared pieces

    /// Between JSON tokens: nothing, a space, or a newline and up to 20 spaces or tabs.
    mutating func ws() throws -> Int {
        if let n = cache["ws"] { return n }
        let indent = try b.add(.rep(try b.add(.byteSet(ByteSet(" \t"))), min: 0, max: 20))
        let n = try b.alt([try b.empty(), try b.literal(" "), try b.seq([try b.literal("\n"), indent])])
        cache["ws"] = n
        return n
    }

    mutating func plainString() throws -> Int {
        if let n = cache["string"] { return n }
        let n = try string(min: 0, max: nil, body: nil)
        cache["string"] = n
        return n
    }

    /// Any JSON value.
    mutating func anyValue() throws -> Int {
        if let n = cache["any"] { return n }
        let value = try b.placeholder()
        cache["any"] = value
        let array = try self.array(items: value, min: 0, max: nil)
        let object = try mapObject(values: value, min: 0, max: nil)
        let number = try b.add(.number(NumberSpec(integer: false)))
        let options = [object, array, try plainString(), number, try b.literal("true"), try b.literal("false"), try b.literal("null")]
        b.define(value, as: try b.alt(options))
        return value
    }

    /// `"…"`: characters from `body` (a regex node) or free ones, counted when bounded.
    mutating func string(min: Int, max: Int?, body: Int?) throws -> Int {
        var inner = try body ?? b.add(.rep(try b.add(.char(.all, run: true)), min: 0, max: nil))
        if min > 0 || max != nil { inner = try b.add(.counted(inner, min: min, max: max)) }
        return try b.seq([try b.literal("\""), inner, try b.literal("\"")])
    }

    mutating func array(items: Int, min: Int, max: Int?) throws -> Int {
        let ws = try self.ws()
        let open = try b.literal("["), close = try b.literal("]")
        if max == 0 { return try b.seq([open, ws, close]) }
        let more = try b.add(.rep(try b.seq([ws, try b.literal(","), ws, items]), min: Swift.max(min - 1, 0), max: max.map { $0 - 1 }))
        let filled = try b.seq([items, more, ws, close])
        return try b.seq([open, ws, min == 0 ? try b.alt([close, filled]) : filled])
    }

    /// An object whose keys are free strings and whose values match `values`.
    mutating func mapObject(values: Int, min: Int, max: Int?) throws -> Int {
        let ws = try self.ws()
        let open = try b.literal("{"), close = try b.literal("}")
        if max == 0 { return try b.seq([open, ws, close]) }
        let member = try b.seq([try plainString(), try b.literal(":"), ws, values])
        let more = try b.add(.rep(try b.seq([ws, try b.literal(","), ws, member]), min: Swift.max(min - 1, 0), max: max.map { $0 - 1 }))
        let filled = try b.seq([member, more, ws, close])
        return try b.seq([open, ws, min == 0 ? try b.alt([close, filled]) : filled])
    }

    /// Longest `enum`/`const`/choice value, in bytes.
    static let maxLiteralBytes = 4096

    /// Exactly one of the byte strings, as a trie (one thread whatever the count); each run of
    /// bytes shared by a whole branch is one literal, so only branching points nest.
    mutating func trie(_ words: [[UInt8]], depth: Int = 0) throws -> Int {
        if let w = words.first(where: { $0.count > Self.maxLiteralBytes }) {
            throw Refusal(path: "", message: "a value of \(w.count) bytes is longer than the \(Self.maxLiteralBytes) allowed in an enum or choice")
        }
        guard depth <= 128 else { throw Refusal(path: "", message: "the values of an enum or choice branch more than 128 times along one value") }
        var options: [Int] = []
        if words.contains(where: \.isEmpty) { options.append(try b.empty()) }
        var groups: [UInt8: [[UInt8]]] = [:]
        for w in words where !w.isEmpty { groups[w[0], default: []].append(w) }
        for first in groups.keys.sorted() {
            let group = groups[first]!
            // The bytes every word of the branch shares (none ends inside them).
            var shared = 1
            while group.allSatisfy({ $0.count > shared && $0[shared] == group[0][shared] }) { shared += 1 }
            let rest = group.map { Array($0.dropFirst(shared)) }
            let head = try b.add(.literal(Array(group[0].prefix(shared))))
            options.append(rest.allSatisfy(\.isEmpty) ? head : try b.seq([head, try trie(rest, depth: depth + 1)]))
        }
        guard !options.isEmpty else { throw Refusal(path: "", message: "an empty list of choices allows nothing") }
        return try b.alt(options)
    }

    // MARK: Schemas

    mutating func value(_ s: JSONValue, _ path: String) throws -> Int {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw Refusal(path: path, message: "the schema is nested more than \(Self.maxDepth) levels deep") }
        if let flag = s.bool {
            guard flag else { throw Refusal(path: path, message: "the schema 'false' allows no value") }
            return try anyValue()
        }
        guard var pairs = s.object else { throw Refusal(path: path, message: "a schema must be an object or a boolean") }
        for (k, _) in pairs where !Self.annotations.contains(k) && !Self.handled.contains(k) {
            throw Refusal(path: path + "/" + k, message: "the keyword '\(k)' is not supported for constrained decoding")
        }
        if let all = s["allOf"] {
            // One element (what Pydantic writes for a described $ref) merges into the schema.
            guard let list = all.array, list.count == 1, let inner = list[0].object else {
                throw Refusal(path: path + "/allOf", message: "'allOf' is supported with exactly one schema")
            }
            pairs.removeAll { $0.0 == "allOf" }
            for (k, v) in inner where !pairs.contains(where: { $0.0 == k }) { pairs.append((k, v)) }
            return try value(.object(pairs), path)
        }
        let s = JSONValue.object(pairs)
        if let ref = s["$ref"] {
            let siblings = pairs.filter { !Self.annotations.contains($0.0) && $0.0 != "$ref" }
            guard siblings.isEmpty else {
                throw Refusal(path: path + "/" + siblings[0].0, message: "keywords beside '$ref' are not supported ('\(siblings[0].0)')")
            }
            return try reference(ref, path + "/$ref")
        }
        if let list = s["anyOf"] {
            guard let options = list.array, !options.isEmpty else { throw Refusal(path: path + "/anyOf", message: "'anyOf' must be a non-empty list") }
            let rest = pairs.filter { !Self.annotations.contains($0.0) && $0.0 != "anyOf" }
            guard rest.isEmpty else {
                throw Refusal(path: path + "/" + rest[0].0, message: "keywords beside 'anyOf' are not supported ('\(rest[0].0)')")
            }
            return try b.alt(try options.enumerated().map { try value($1, path + "/anyOf/\($0)") })
        }
        let types = try self.types(s, path)
        if let c = s["const"] { return try literalValues([c], types: types, path + "/const") }
        if let e = s["enum"] {
            guard let values = e.array, !values.isEmpty else { throw Refusal(path: path + "/enum", message: "'enum' must be a non-empty list") }
            return try literalValues(values, types: types, path + "/enum")
        }
        if s["uniqueItems"]?.bool == true {
            throw Refusal(path: path + "/uniqueItems", message: "'uniqueItems: true' is not supported for constrained decoding")
        }
        var options: [Int] = []
        for t in types { options.append(try typed(t, s, path)) }
        return try b.alt(options)
    }

    static let allTypes = ["object", "array", "string", "number", "integer", "boolean", "null"]

    /// The types a schema allows: its `type`, or what its keywords imply, or all.
    func types(_ s: JSONValue, _ path: String) throws -> [String] {
        var list: [String]
        switch s["type"] {
        case nil: list = []
        case .string(let t)?: list = [t]
        case .array(let a)?:
            list = try a.map {
                guard let t = $0.string else { throw Refusal(path: path + "/type", message: "'type' must be a string or a list of strings") }
                return t
            }
            guard !list.isEmpty else { throw Refusal(path: path + "/type", message: "'type' must not be an empty list") }
        default: throw Refusal(path: path + "/type", message: "'type' must be a string or a list of strings")
        }
        for t in list where !Self.allTypes.contains(t) {
            throw Refusal(path: path + "/type", message: "unknown type '\(t)'")
        }
        if list.isEmpty {
            let keys = Set(s.object?.map(\.0) ?? [])
            if !keys.isDisjoint(with: ["properties", "required", "additionalProperties", "minProperties", "maxProperties"]) { list.append("object") }
            if !keys.isDisjoint(with: ["items", "minItems", "maxItems"]) { list.append("array") }
            if !keys.isDisjoint(with: ["pattern", "format", "minLength", "maxLength"]) { list.append("string") }
            if !keys.isDisjoint(with: ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) { list.append("number") }
            if list.isEmpty { list = Self.allTypes.filter { $0 != "integer" } }
        }
        // "number" already covers integers.
        if list.contains("number") { list.removeAll { $0 == "integer" } }
        var seen = Set<String>()
        return list.filter { seen.insert($0).inserted }
    }

    /// `enum`/`const`: the values' JSON text, those of an allowed type.
    mutating func literalValues(_ values: [JSONValue], types: [String], _ path: String) throws -> Int {
        let kept = values.filter { v in
            switch v {
            case .null: return types.contains("null")
            case .bool: return types.contains("boolean")
            case .int: return types.contains("integer") || types.contains("number")
            case .double(let d): return types.contains("number") || (types.contains("integer") && d == d.rounded())
            case .string: return types.contains("string")
            case .array: return types.contains("array")
            case .object: return types.contains("object")
            }
        }
        guard !kept.isEmpty else { throw Refusal(path: path, message: "no listed value has the schema's type") }
        return try trie(kept.map { Array($0.compact.utf8) })
    }

    mutating func typed(_ t: String, _ s: JSONValue, _ path: String) throws -> Int {
        switch t {
        case "null": return try b.literal("null")
        case "boolean": return try b.alt([try b.literal("true"), try b.literal("false")])
        case "integer", "number": return try number(integer: t == "integer", s, path)
        case "string": return try stringSchema(s, path)
        case "array":
            let items = try s["items"].map { try value($0, path + "/items") } ?? anyValue()
            let (lo, hi) = try bounds(s, "minItems", "maxItems", path)
            return try array(items: items, min: lo, max: hi)
        default: return try object(s, path)
        }
    }

    func bounds(_ s: JSONValue, _ minKey: String, _ maxKey: String, _ path: String) throws -> (Int, Int?) {
        func read(_ k: String) throws -> Int? {
            guard let v = s[k] else { return nil }
            guard let i = v.int, i >= 0 else { throw Refusal(path: path + "/" + k, message: "'\(k)' must be a non-negative integer") }
            guard i <= 100_000 else { throw Refusal(path: path + "/" + k, message: "'\(k)' above 100000 is not supported") }
            return i
        }
        let lo = try read(minKey) ?? 0, hi = try read(maxKey)
        if let hi, hi < lo { throw Refusal(path: path + "/" + maxKey, message: "'\(maxKey)' is below '\(minKey)'") }
        return (lo, hi)
    }

    mutating func number(integer: Bool, _ s: JSONValue, _ path: String) throws -> Int {
        func read(_ k: String) throws -> Double? {
            guard let v = s[k] else { return nil }
            guard let d = v.double, d.isFinite else { throw Refusal(path: path + "/" + k, message: "'\(k)' must be a number") }
            return d
        }
        var lo = try read("minimum"), hi = try read("maximum")
        var loEx = false, hiEx = false
        if let x = try read("exclusiveMinimum"), lo.map({ x >= $0 }) ?? true { lo = x; loEx = true }
        if let x = try read("exclusiveMaximum"), hi.map({ x <= $0 }) ?? true { hi = x; hiEx = true }
        let spec = NumberSpec(integer: integer, minimum: lo, maximum: hi, exclusiveMinimum: loEx, exclusiveMaximum: hiEx)
        guard spec.isSatisfiable else {
            throw Refusal(path: path, message: "no \(integer ? "integer" : "number") of at most 15 digits meets the bounds")
        }
        return try b.add(.number(spec))
    }

    mutating func stringSchema(_ s: JSONValue, _ path: String) throws -> Int {
        let (lo, hi) = try bounds(s, "minLength", "maxLength", path)
        var body: Int? = nil
        if let p = s["pattern"] {
            guard let pattern = p.string else { throw Refusal(path: path + "/pattern", message: "'pattern' must be a string") }
            guard s["format"] == nil else { throw Refusal(path: path + "/format", message: "'format' together with 'pattern' is not supported") }
            do { body = try RegexCompiler.compile(pattern, into: &b) } catch let e as RegexCompiler.Failure {
                throw Refusal(path: path + "/pattern", message: e.description)
            }
        } else if let f = s["format"] {
            guard let name = f.string, let pattern = Self.formats[name] else {
                throw Refusal(path: path + "/format", message: "the format '\(f.string ?? f.compact)' is not supported (supported: \(Self.formats.keys.sorted().joined(separator: ", ")))")
            }
            if let n = cache["format:" + name] {
                body = n
            } else {
                body = try RegexCompiler.compile(pattern, into: &b)
                cache["format:" + name] = body
            }
        }
        if body == nil && lo == 0 && hi == nil { return try plainString() }
        return try string(min: lo, max: hi, body: body)
    }

    static let date = "[0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
    static let time = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
    /// What each supported `format` is generated as. Dates leave out 29 February (whose
    /// validity depends on the year), so every generated date is a real one.
    static let formats: [String: String] = [
        "date": date,
        "time": time,
        "date-time": date + "T" + time,
        "uuid": "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "email": "[a-zA-Z0-9_%+-]+(\\.[a-zA-Z0-9_%+-]+)*@[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\\.[a-zA-Z]{2,12}",
        "ipv4": "((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    ]

    mutating func object(_ s: JSONValue, _ path: String) throws -> Int {
        let ws = try self.ws()
        let props = try s["properties"].map { p -> [(String, JSONValue)] in
            guard let o = p.object else { throw Refusal(path: path + "/properties", message: "'properties' must be an object") }
            return o
        } ?? []
        var required = Set<String>()
        if let r = s["required"] {
            guard let list = r.array?.compactMap(\.string), list.count == r.array?.count else {
                throw Refusal(path: path + "/required", message: "'required' must be a list of strings")
            }
            required = Set(list)
        }
        let missing = required.filter { name in !props.contains { $0.0 == name } }.sorted()
        let additional = s["additionalProperties"]
        if props.isEmpty && missing.isEmpty {
            let (lo, hi) = try bounds(s, "minProperties", "maxProperties", path)
            let values: Int
            switch additional {
            case .bool(false)?: return try b.seq([try b.literal("{"), ws, try b.literal("}")])
            case nil, .bool(true)?: values = try anyValue()
            case let schema?: values = try value(schema, path + "/additionalProperties")
            }
            return try mapObject(values: values, min: lo, max: hi)
        }
        for k in ["minProperties", "maxProperties"] where s[k] != nil {
            throw Refusal(path: path + "/" + k, message: "'\(k)' is supported only for objects without 'properties'")
        }
        // Declared properties in order, then required ones without a schema (any value).
        var members: [(required: Bool, node: Int)] = []
        for (name, schema) in props + missing.map({ ($0, JSONValue.bool(true)) }) {
            let key = JSONValue.string(name).compact
            let v = try value(schema, path + "/properties/" + Self.escapePointer(name))
            members.append((required.contains(name), try b.seq([try b.literal(key + ":"), ws, v])))
        }
        // after[i]: members i… once at least one has been written (each preceded by a comma);
        // first[i]: members i… with none written yet.
        let comma = try b.seq([ws, try b.literal(","), ws])
        var after = try b.empty(), first = try b.empty()
        for m in members.reversed() {
            let withComma = try b.seq([comma, m.node, after])
            let asFirst = try b.seq([m.node, after])
            if m.required {
                after = withComma
                first = asFirst
            } else {
                after = try b.alt([withComma, after])
                first = try b.alt([asFirst, first])
            }
        }
        return try b.seq([try b.literal("{"), ws, first, ws, try b.literal("}")])
    }

    mutating func reference(_ ref: JSONValue, _ path: String) throws -> Int {
        guard let r = ref.string else { throw Refusal(path: path, message: "'$ref' must be a string") }
        let key = "\(documentKey)\(r)"
        if let n = refs[key] { return n }
        guard r == "#" || r.hasPrefix("#/") else {
            throw Refusal(path: path, message: "only references within the schema ('#/...') are supported, not '\(r)'")
        }
        var target = document
        for raw in r.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) where r != "#" {
            let part = raw.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
            if let o = target.object, let v = o.last(where: { $0.0 == part })?.1 {
                target = v
            } else if let a = target.array, let i = Int(part), a.indices.contains(i) {
                target = a[i]
            } else {
                throw Refusal(path: path, message: "the reference '\(r)' points at nothing in the schema")
            }
        }
        let node = try b.placeholder()
        refs[key] = node
        b.define(node, as: try value(target, r))
        return node
    }

    static func escapePointer(_ s: String) -> String {
        s.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
    }
}
