import Foundation

/// A value while a template renders, with Python's semantics for truth, equality,
/// printing and arithmetic (chat templates are written against Python Jinja).
public indirect enum JinjaValue {
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case dict([(String, JinjaValue)])
    case namespace(JinjaNamespace)
    case macro(JinjaMacro)
    case function(String)
    case method(JinjaValue, String)
    case loopCycler([JinjaValue], Int)

    public init(_ json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(JinjaValue.init))
        case .object(let o): self = .dict(o.map { ($0.0, JinjaValue($0.1)) })
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l): return !l.isEmpty
        case .dict(let d): return !d.isEmpty
        default: return true
        }
    }

    /// Python's str().
    var str: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's repr().
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return JSONValue.formatDouble(d).replacingOccurrences(of: "Infinity", with: "inf").replacingOccurrences(of: "NaN", with: "nan")
        case .string(let s):
            let q = s.contains("'") && !s.contains("\"") ? "\"" : "'"
            var out = q
            for c in s.unicodeScalars {
                switch c {
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if String(c) == q { out += "\\" + q } else { out.unicodeScalars.append(c) }
                }
            }
            return out + q
        case .list(let l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): return "{" + d.map { JinjaValue.string($0.0).repr + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .macro(let m): return "<Macro '\(m.name)'>"
        case .function(let n): return "<function \(n)>"
        case .method(_, let n): return "<method \(n)>"
        case .loopCycler: return "<cycler>"
        }
    }

    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .dict: return "dict"
        default: return "object"
        }
    }

    /// Python ==.
    func equals(_ o: JinjaValue) -> Bool {
        switch (self, o) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.int(a), .int(b)): return a == b
        case let (.double(a), .double(b)): return a == b
        case let (.int(a), .double(b)), let (.double(b), .int(a)): return Double(a) == b
        case let (.bool(a), .int(b)), let (.int(b), .bool(a)): return (a ? 1 : 0) == b
        case let (.string(a), .string(b)): return a == b
        case let (.list(a), .list(b)): return a.count == b.count && zip(a, b).allSatisfy { $0.equals($1) }
        case let (.dict(a), .dict(b)):
            return a.count == b.count && a.allSatisfy { kv in b.contains { $0.0 == kv.0 && $0.1.equals(kv.1) } }
        default: return false
        }
    }

    var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Converts to JSON for `tojson`; namespaces and functions cannot be.
    func toJSON() throws -> JSONValue {
        switch self {
        case .none, .undefined: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .list(let l): return .array(try l.map { try $0.toJSON() })
        case .dict(let d): return .object(try d.map { ($0.0, try $0.1.toJSON()) })
        default: throw JinjaError("\(repr) is not JSON serializable")
        }
    }
}

public final class JinjaNamespace {
    var attributes: [(String, JinjaValue)]
    init(_ a: [(String, JinjaValue)]) { attributes = a }
    subscript(key: String) -> JinjaValue? {
        get { attributes.last { $0.0 == key }?.1 }
        set {
            if let i = attributes.firstIndex(where: { $0.0 == key }) { attributes[i].1 = newValue ?? .none } else if let v = newValue { attributes.append((key, v)) }
        }
    }
}

public final class JinjaMacro {
    let name: String
    let params: [(String, JinjaExpr?)]
    let body: [JinjaNode]
    init(name: String, params: [(String, JinjaExpr?)], body: [JinjaNode]) {
        self.name = name
        self.params = params
        self.body = body
    }
}
