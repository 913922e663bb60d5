import Foundation

/// Filters, tests, global functions and the Python methods on str/dict/list that chat
/// templates call. Names outside these lists are refused when the template is parsed.
enum JinjaBuiltins {
    static let filters: Set<String> = [
        "tojson", "length", "count", "trim", "lower", "upper", "title", "capitalize", "default", "d", "join", "first",
        "last", "list", "string", "int", "float", "replace", "items", "reverse", "safe", "e", "escape", "abs", "round",
        "map", "selectattr", "rejectattr", "select", "reject", "unique", "sort", "dictsort", "indent", "wordcount",
        "center", "truncate", "min", "max", "sum", "batch", "attr", "striptags", "format",
    ]
    static let tests: Set<String> = [
        "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false", "mapping",
        "iterable", "sequence", "callable", "even", "odd", "divisibleby", "eq", "equalto", "ne", "lt", "gt", "le", "ge",
        "in", "lower", "upper", "sameas",
    ]
    static let functions: Set<String> = ["range", "namespace", "raise_exception", "strftime_now", "dict", "joiner", "cycler"]
    static let stringMethods: Set<String> = [
        "startswith", "endswith", "split", "rsplit", "strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize",
        "replace", "find", "rfind", "count", "join", "splitlines", "isdigit", "isalpha", "isspace", "format",
    ]
    static let dictMethods: Set<String> = ["items", "keys", "values", "get"]
    static let listMethods: Set<String> = ["index", "count"]

    static func arg(_ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], _ i: Int, _ name: String) -> JinjaValue? {
        if i < args.count { return args[i] }
        return kwargs.last { $0.0 == name }?.1
    }

    static func string(_ v: JinjaValue, _ what: String) throws -> String {
        guard case .string(let s) = v else { throw JinjaError("\(what) needs a string, not \(v.typeName)") }
        return s
    }

    static func sequence(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .list(let l): return l
        case .dict(let d): return d.map { .string($0.0) }
        case .string(let s): return s.map { .string(String($0)) }
        case .undefined, .none: return []
        default: throw JinjaError("\(v.typeName) is not iterable")
        }
    }

    // MARK: Filters

    static func filter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], renderer: Renderer) throws -> JinjaValue {
        switch name {
        case "tojson":
            var indent: Int? = nil
            if case .int(let n)? = arg(args, kwargs, 0, "indent") { indent = n }
            var out = ""
            let json = try v.toJSON()
            if let indent {
                json.write(into: &out, itemSeparator: ",", keySeparator: ": ", asciiOnly: false, indent: indent)
            } else {
                out = json.pythonDumps
            }
            return .string(out)
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.count)
            case .list(let l): return .int(l.count)
            case .dict(let d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw JinjaError("object of type \(v.typeName) has no len()")
            }
        case "trim":
            if let chars = arg(args, kwargs, 0, "chars"), case .string(let c) = chars { return .string(strip(v.str, Set(c.unicodeScalars), true, true)) }
            return .string(v.str.trimmingWhitespace)
        case "lower": return .string(v.str.lowercased())
        case "upper": return .string(v.str.uppercased())
        case "title": return .string(v.str.capitalized)
        case "capitalize":
            let s = v.str
            return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
        case "default", "d":
            let def = arg(args, kwargs, 0, "default_value") ?? .string("")
            let boolean = arg(args, kwargs, 1, "boolean")?.truthy ?? false
            if v.isUndefined || (boolean && !v.truthy) { return def }
            return v
        case "join":
            let sep = arg(args, kwargs, 0, "d")?.str ?? ""
            var items = try sequence(v)
            if let attr = arg(args, kwargs, 1, "attribute") { items = try items.map { try renderer.attribute($0, attr.str) } }
            return .string(items.map(\.str).joined(separator: sep))
        case "first": return try sequence(v).first ?? .undefined("first")
        case "last": return try sequence(v).last ?? .undefined("last")
        case "list": return .list(try sequence(v))
        case "string": return .string(v.str)
        case "int":
            switch v {
            case .int: return v
            case .double(let d): return .int(Int(d))
            case .bool(let b): return .int(b ? 1 : 0)
            case .string(let s): return .int(Int(s.trimmingWhitespace) ?? Int(Double(s.trimmingWhitespace) ?? 0))
            default: return .int(0)
            }
        case "float":
            if let n = v.number { return .double(n) }
            if case .string(let s) = v { return .double(Double(s.trimmingWhitespace) ?? 0) }
            return .double(0)
        case "abs":
            if case .int(let i) = v { return .int(abs(i)) }
            return .double(abs(v.number ?? 0))
        case "round":
            let places = arg(args, kwargs, 0, "precision").flatMap { if case .int(let i) = $0 { return i } else { return nil } } ?? 0
            let m = pow(10.0, Double(places))
            return .double(((v.number ?? 0) * m).rounded(.toNearestOrEven) / m)
        case "replace":
            guard args.count >= 2 else { throw JinjaError("replace needs two arguments") }
            return .string(v.str.replacingOccurrences(of: args[0].str, with: args[1].str))
        case "items":
            guard case .dict(let d) = v else { if v.isUndefined { return .list([]) }; throw JinjaError("items needs a mapping") }
            return .list(d.map { .list([.string($0.0), $0.1]) })
        case "reverse":
            if case .string(let s) = v { return .string(String(s.reversed())) }
            return .list(try sequence(v).reversed())
        case "safe", "e", "escape": return v
        case "unique":
            var out: [JinjaValue] = []
            for x in try sequence(v) where !out.contains(where: { $0.equals(x) }) { out.append(x) }
            return .list(out)
        case "sort", "dictsort":
            var items = try sequence(v)
            if name == "dictsort", case .dict(let d) = v { items = d.map { .list([.string($0.0), $0.1]) } }
            let reverse = arg(args, kwargs, 0, "reverse")?.truthy ?? false
            let attribute = kwargs.last { $0.0 == "attribute" }?.1.str
            func key(_ x: JinjaValue) throws -> JinjaValue {
                if name == "dictsort", case .list(let p) = x { return p[0] }
                if let attribute { return try renderer.attribute(x, attribute) }
                return x
            }
            let keyed = try items.map { (try key($0), $0) }
            let sorted = try keyed.sorted { a, b in try renderer.binary("<", a.0, b.0).truthy }
            return .list((reverse ? sorted.reversed() : sorted).map(\.1))
        case "map":
            let items = try sequence(v)
            if let attr = kwargs.last(where: { $0.0 == "attribute" })?.1 {
                return .list(try items.map { try renderer.attribute($0, attr.str) })
            }
            guard let f = args.first else { throw JinjaError("map needs a filter name or attribute=") }
            return .list(try items.map { try filter(f.str, $0, Array(args.dropFirst()), [], renderer: renderer) })
        case "selectattr", "rejectattr":
            guard let attr = args.first?.str else { throw JinjaError("\(name) needs an attribute name") }
            let keep = name == "selectattr"
            return .list(try sequence(v).filter { item in
                let a = try renderer.attribute(item, attr)
                let r = args.count > 1 ? try test(args[1].str, a, Array(args.dropFirst(2))) : a.truthy
                return r == keep
            })
        case "select", "reject":
            let keep = name == "select"
            return .list(try sequence(v).filter { item in
                let r = args.isEmpty ? item.truthy : try test(args[0].str, item, Array(args.dropFirst()))
                return r == keep
            })
        case "indent":
            let width = arg(args, kwargs, 0, "width").flatMap { if case .int(let i) = $0 { return i } else { return nil } } ?? 4
            let first = arg(args, kwargs, 1, "first")?.truthy ?? false
            let pad = String(repeating: " ", count: width)
            let lines = v.str.components(separatedBy: "\n")
            return .string(lines.enumerated().map { i, l in (i == 0 && !first) || l.isEmpty ? l : pad + l }.joined(separator: "\n"))
        case "wordcount": return .int(v.str.split(whereSeparator: \.isWhitespace).count)
        case "center": return v
        case "truncate": return v
        case "striptags": return .string(v.str.replacingOccurrences(of: "<[^>]*>", with: "", options: .regularExpression))
        case "min", "max":
            let items = try sequence(v)
            guard var best = items.first else { return .undefined(name) }
            for x in items.dropFirst() where try renderer.binary(name == "min" ? "<" : ">", x, best).truthy { best = x }
            return best
        case "sum":
            var acc: JinjaValue = .int(0)
            for x in try sequence(v) { acc = try renderer.binary("+", acc, x) }
            return acc
        case "batch":
            guard case .int(let n)? = args.first, n > 0 else { throw JinjaError("batch needs a positive size") }
            let items = try sequence(v)
            return .list(stride(from: 0, to: items.count, by: n).map { .list(Array(items[$0..<min($0 + n, items.count)])) })
        case "attr": return try renderer.attribute(v, args.first?.str ?? "")
        case "format": return try method(v, "format", args, kwargs)
        default: throw JinjaError("unsupported filter '\(name)'")
        }
    }

    // MARK: Tests

    static func test(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws -> Bool {
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true } else { return false }
        case "string": if case .string = v { return true } else { return false }
        case "number": switch v { case .int, .double: return true; default: return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "mapping": switch v { case .dict, .namespace: return true; default: return false }
        case "iterable": switch v { case .list, .dict, .string: return true; default: return false }
        case "sequence": switch v { case .list, .string, .dict: return true; default: return false }
        case "callable": switch v { case .macro, .function, .method: return true; default: return false }
        case "even", "odd":
            guard case .int(let i) = v else { throw JinjaError("\(name) needs an integer") }
            return (i % 2 == 0) == (name == "even")
        case "divisibleby":
            guard case .int(let i) = v, case .int(let d)? = args.first, d != 0 else { throw JinjaError("divisibleby needs integers") }
            return i % d == 0
        case "eq", "equalto", "sameas": return args.first.map { v.equals($0) } ?? false
        case "ne": return !(args.first.map { v.equals($0) } ?? false)
        case "lt", "gt", "le", "ge":
            guard let o = args.first else { return false }
            let op = ["lt": "<", "gt": ">", "le": "<=", "ge": ">="][name]!
            return try Renderer(globals: [:]).binary(op, v, o).truthy
        case "in": return try args.first.map { try Renderer(globals: [:]).binary("in", v, $0).truthy } ?? false
        case "lower": return v.str == v.str.lowercased()
        case "upper": return v.str == v.str.uppercased()
        default: throw JinjaError("unsupported test '\(name)'")
        }
    }

    // MARK: Global functions

    static func call(_ name: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue {
        switch name {
        case "range":
            let ints = try args.map { v -> Int in
                guard case .int(let i) = v else { throw JinjaError("range needs integers") }
                return i
            }
            let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : ints.count == 2 ? (ints[0], ints[1], 1) : ints.count == 3 ? (ints[0], ints[1], ints[2]) : (0, 0, 1)
            guard step != 0 else { throw JinjaError("range step cannot be zero") }
            guard abs(stop - start) / abs(step) < 1_000_000 else { throw JinjaError("range too large") }
            return .list(stride(from: start, to: stop, by: step).map { .int($0) })
        case "namespace":
            var attrs: [(String, JinjaValue)] = []
            if case .dict(let d)? = args.first { attrs = d }
            attrs += kwargs
            return .namespace(JinjaNamespace(attrs))
        case "dict": return .dict(kwargs)
        case "raise_exception":
            throw JinjaError("template raised: \(args.first?.str ?? "an exception")")
        case "strftime_now":
            let f = DateFormatter()
            f.locale = Locale(identifier: "en_US_POSIX")
            f.dateFormat = strftimeToDateFormat(args.first?.str ?? "%Y-%m-%d")
            return .string(f.string(from: Date()))
        default: throw JinjaError("unsupported function \(name)")
        }
    }

    static func strftimeToDateFormat(_ s: String) -> String {
        let map: [Character: String] = ["Y": "yyyy", "m": "MM", "d": "dd", "H": "HH", "M": "mm", "S": "ss", "B": "MMMM",
                                        "b": "MMM", "A": "EEEE", "a": "EEE", "y": "yy", "p": "a", "I": "hh", "j": "DDD"]
        var out = ""
        var pct = false
        for c in s {
            if pct {
                out += map[c] ?? String(c)
                pct = false
            } else if c == "%" {
                pct = true
            } else if c.isLetter {
                out += "'\(c)'"
            } else {
                out.append(c)
            }
        }
        return out
    }

    // MARK: Methods

    static func strip(_ s: String, _ chars: Set<Unicode.Scalar>?, _ leading: Bool, _ trailing: Bool) -> String {
        var u = Array(s.unicodeScalars)
        let drop: (Unicode.Scalar) -> Bool = { chars?.contains($0) ?? $0.properties.isWhitespace }
        if trailing { while let l = u.last, drop(l) { u.removeLast() } }
        var start = 0
        if leading { while start < u.count, drop(u[start]) { start += 1 } }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: u[start...])
        return String(out)
    }

    static func method(_ base: JinjaValue, _ name: String, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)]) throws -> JinjaValue {
        switch base {
        case .string(let s):
            func chars() -> Set<Unicode.Scalar>? {
                guard let a = arg(args, kwargs, 0, "chars"), case .string(let c) = a else { return nil }
                return Set(c.unicodeScalars)
            }
            switch name {
            case "startswith", "endswith":
                let options: [String]
                switch args.first {
                case .string(let p)?: options = [p]
                case .list(let l)?: options = l.map(\.str)
                default: throw JinjaError("\(name) needs a string")
                }
                return .bool(options.contains { name == "startswith" ? s.unicodeScalars.starts(with: $0.unicodeScalars) : s.unicodeScalars.reversed().starts(with: $0.unicodeScalars.reversed()) })
            case "strip": return .string(strip(s, chars(), true, true))
            case "lstrip": return .string(strip(s, chars(), true, false))
            case "rstrip": return .string(strip(s, chars(), false, true))
            case "upper": return .string(s.uppercased())
            case "lower": return .string(s.lowercased())
            case "title": return .string(s.capitalized)
            case "capitalize": return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
            case "split", "rsplit":
                let sepV = arg(args, kwargs, 0, "sep")
                var maxSplit = -1
                if case .int(let m)? = arg(args, kwargs, 1, "maxsplit") { maxSplit = m }
                if sepV == nil || { if case .none = sepV! { return true } else { return false } }() {
                    var parts = s.split(whereSeparator: { $0.isWhitespace }).map(String.init)
                    if maxSplit >= 0 && parts.count > maxSplit + 1 {
                        // Rejoining loses the original white space; exact enough for templates.
                        parts = Array(parts.prefix(maxSplit)) + [parts.dropFirst(maxSplit).joined(separator: " ")]
                    }
                    return .list(parts.map { .string($0) })
                }
                let sep = try string(sepV!, "split")
                guard !sep.isEmpty else { throw JinjaError("empty separator") }
                var parts = s.components(separatedBy: sep)
                if maxSplit >= 0 && parts.count > maxSplit + 1 {
                    if name == "split" {
                        parts = Array(parts.prefix(maxSplit)) + [parts.dropFirst(maxSplit).joined(separator: sep)]
                    } else {
                        let keep = parts.count - maxSplit
                        parts = [parts.prefix(keep).joined(separator: sep)] + Array(parts.suffix(maxSplit))
                    }
                }
                return .list(parts.map { .string($0) })
            case "splitlines": return .list(s.components(separatedBy: .newlines).map { .string($0) })
            case "replace":
                guard args.count >= 2 else { throw JinjaError("replace needs two arguments") }
                return .string(s.replacingOccurrences(of: args[0].str, with: args[1].str))
            case "find", "rfind":
                let sub = args.first?.str ?? ""
                guard let r = name == "find" ? s.range(of: sub) : s.range(of: sub, options: .backwards) else { return .int(-1) }
                return .int(s.distance(from: s.startIndex, to: r.lowerBound))
            case "count": return .int(max(s.components(separatedBy: args.first?.str ?? "").count - 1, 0))
            case "join": return .string(try sequence(args.first ?? .list([])).map(\.str).joined(separator: s))
            case "isdigit": return .bool(!s.isEmpty && s.allSatisfy(\.isNumber))
            case "isalpha": return .bool(!s.isEmpty && s.allSatisfy(\.isLetter))
            case "isspace": return .bool(!s.isEmpty && s.allSatisfy(\.isWhitespace))
            case "format":
                var out = s
                for a in args { if let r = out.range(of: "{}") { out.replaceSubrange(r, with: a.str) } }
                for (k, v) in kwargs { out = out.replacingOccurrences(of: "{\(k)}", with: v.str) }
                return .string(out)
            default: break
            }
        case .dict(let d):
            switch name {
            case "items": return .list(d.map { .list([.string($0.0), $0.1]) })
            case "keys": return .list(d.map { .string($0.0) })
            case "values": return .list(d.map(\.1))
            case "get":
                let k = args.first?.str ?? ""
                return d.last { $0.0 == k }?.1 ?? (args.count > 1 ? args[1] : .none)
            default: break
            }
        case .list(let l):
            switch name {
            case "index":
                guard let x = args.first, let i = l.firstIndex(where: { $0.equals(x) }) else { throw JinjaError("value not in list") }
                return .int(i)
            case "count": return .int(l.filter { $0.equals(args.first ?? .none) }.count)
            default: break
            }
        default: break
        }
        throw JinjaError("\(base.typeName) has no method \(name)")
    }
}
