import Foundation

/// A parsed template, rendered by a tree-walking interpreter. Parsing happens once
/// (at model load), so an unsupported construct is reported then, not per request.
public final class JinjaTemplate: @unchecked Sendable {
    let nodes: [JinjaNode]

    public init(_ source: String) throws {
        var p = try JinjaParser(source)
        nodes = try p.parse()
    }

    public func render(_ context: [String: JinjaValue]) throws -> String {
        let r = Renderer(globals: context)
        var out = ""
        try r.run(nodes, into: &out)
        return out
    }
}

/// Signals for loop control, carried through the node walker.
enum Flow { case normal, breakLoop, continueLoop }

final class Renderer {
    var scopes: [[String: JinjaValue]]
    var steps = 0
    static let maxSteps = 5_000_000

    init(globals: [String: JinjaValue]) { scopes = [globals] }

    func lookup(_ name: String) -> JinjaValue {
        for s in scopes.reversed() { if let v = s[name] { return v } }
        if JinjaBuiltins.functions.contains(name) { return .function(name) }
        return .undefined(name)
    }

    func assign(_ name: String, _ v: JinjaValue) { scopes[scopes.count - 1][name] = v }

    @discardableResult
    func run(_ nodes: [JinjaNode], into out: inout String) throws -> Flow {
        for n in nodes {
            steps += 1
            guard steps < Self.maxSteps else { throw JinjaError("template ran too long") }
            let f = try run(n, into: &out)
            if f != .normal { return f }
        }
        return .normal
    }

    func run(_ node: JinjaNode, into out: inout String) throws -> Flow {
        switch node {
        case .text(let t): out += t
        case .output(let e): out += try eval(e).str
        case .sequence(let body): return try run(body, into: &out)
        case .ifChain(let branches, let otherwise):
            for (cond, body) in branches where try eval(cond).truthy { return try run(body, into: &out) }
            return try run(otherwise, into: &out)
        case .forLoop(let targets, let iterable, let condition, let body, let otherwise):
            return try runFor(targets, try eval(iterable), condition, body, otherwise, &out)
        case .set(let target, let value):
            let v = try eval(value)
            switch target {
            case .name(let n): assign(n, v)
            case .attribute(.name(let n), let attr):
                guard case .namespace(let ns) = lookup(n) else { throw JinjaError("cannot assign attribute on non-namespace '\(n)'") }
                ns[attr] = v
            default: throw JinjaError("unsupported assignment target")
            }
        case .setBlock(let name, let body):
            var s = ""
            try run(body, into: &s)
            assign(name, .string(s))
        case .macro(let name, let params, let body):
            assign(name, .macro(JinjaMacro(name: name, params: params, body: body)))
        case .callBlock(let call, let body):
            guard case .call(let callee, let args, let kwargs) = call else { throw JinjaError("call block needs a macro call") }
            let caller = JinjaMacro(name: "caller", params: [], body: body)
            out += try callValue(try eval(callee), try args.map(eval), try kwargs.map { ($0.0, try eval($0.1)) }, caller: caller).str
        case .filterBlock(let f, let args, let body):
            var s = ""
            try run(body, into: &s)
            out += try JinjaBuiltins.filter(f, .string(s), try args.map(eval), [], renderer: self).str
        case .loopBreak: return .breakLoop
        case .loopContinue: return .continueLoop
        }
        return .normal
    }

    func runFor(_ targets: [String], _ seq: JinjaValue, _ condition: JinjaExpr?, _ body: [JinjaNode],
                _ otherwise: [JinjaNode], _ out: inout String) throws -> Flow {
        var items: [JinjaValue]
        switch seq {
        case .list(let l): items = l
        case .dict(let d): items = d.map { .string($0.0) }
        case .string(let s): items = s.map { .string(String($0)) }
        case .undefined, .none: items = []
        default: throw JinjaError("\(seq.typeName) is not iterable")
        }
        func bind(_ item: JinjaValue) throws {
            if targets.count == 1 { assign(targets[0], item); return }
            guard case .list(let parts) = item, parts.count == targets.count else {
                throw JinjaError("cannot unpack \(item.repr) into \(targets.count) names")
            }
            for (t, v) in zip(targets, parts) { assign(t, v) }
        }
        if let condition {
            var kept: [JinjaValue] = []
            for it in items {
                scopes.append([:])
                defer { scopes.removeLast() }
                try bind(it)
                if try eval(condition).truthy { kept.append(it) }
            }
            items = kept
        }
        if items.isEmpty { return try run(otherwise, into: &out) }
        let n = items.count
        for (idx, it) in items.enumerated() {
            var loop: [(String, JinjaValue)] = [
                ("index", .int(idx + 1)), ("index0", .int(idx)), ("first", .bool(idx == 0)), ("last", .bool(idx == n - 1)),
                ("length", .int(n)), ("revindex", .int(n - idx)), ("revindex0", .int(n - idx - 1)), ("depth", .int(1)), ("depth0", .int(0)),
            ]
            loop.append(("previtem", idx > 0 ? items[idx - 1] : .undefined("previtem")))
            loop.append(("nextitem", idx < n - 1 ? items[idx + 1] : .undefined("nextitem")))
            loop.append(("cycle", .loopCycler([], idx)))
            scopes.append(["loop": .dict(loop)])
            defer { scopes.removeLast() }
            try bind(it)
            let f = try run(body, into: &out)
            if f == .breakLoop { break }
        }
        return .normal
    }

    // MARK: Expressions

    func eval(_ e: JinjaExpr) throws -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .list(try items.map(eval))
        case .tuple(let items): return .list(try items.map(eval))
        case .dict(let pairs):
            return .dict(try pairs.map { p in
                let k = try eval(p.0)
                guard case .string(let ks) = k else { throw JinjaError("dict keys must be strings") }
                return (ks, try eval(p.1))
            })
        case .attribute(let base, let name): return try attribute(try eval(base), name)
        case .item(let base, let key): return try item(try eval(base), try eval(key))
        case .slice(let base, let a, let b, let c):
            return try slice(try eval(base), try a.map(eval), try b.map(eval), try c.map(eval))
        case .call(let callee, let args, let kwargs):
            return try callValue(try eval(callee), try args.map(eval), try kwargs.map { ($0.0, try eval($0.1)) }, caller: nil)
        case .filter(let base, let name, let args, let kwargs):
            return try JinjaBuiltins.filter(name, try eval(base), try args.map(eval), try kwargs.map { ($0.0, try eval($0.1)) }, renderer: self)
        case .test(let base, let name, let args, let negated):
            let r = try JinjaBuiltins.test(name, try eval(base), try args.map(eval))
            return .bool(negated ? !r : r)
        case .not(let x): return .bool(!(try eval(x).truthy))
        case .and(let a, let b):
            let l = try eval(a)
            return l.truthy ? try eval(b) : l
        case .or(let a, let b):
            let l = try eval(a)
            return l.truthy ? l : try eval(b)
        case .unary(_, let x):
            switch try eval(x) {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            case let v: throw JinjaError("bad operand for unary -: \(v.typeName)")
            }
        case .conditional(let cond, let then, let otherwise):
            if try eval(cond).truthy { return try eval(then) }
            return try otherwise.map(eval) ?? .undefined("else")
        case .binary(let op, let a, let b): return try binary(op, try eval(a), try eval(b))
        }
    }

    func attribute(_ base: JinjaValue, _ name: String) throws -> JinjaValue {
        switch base {
        case .dict(let d):
            if let v = d.last(where: { $0.0 == name })?.1 { return v }
            if JinjaBuiltins.dictMethods.contains(name) { return .method(base, name) }
            return .undefined(name)
        case .namespace(let ns): return ns[name] ?? .undefined(name)
        case .string:
            return JinjaBuiltins.stringMethods.contains(name) ? .method(base, name) : .undefined(name)
        case .list:
            return JinjaBuiltins.listMethods.contains(name) ? .method(base, name) : .undefined(name)
        case .undefined(let n): throw JinjaError("'\(n)' is undefined (reading .\(name))")
        case .loopCycler: return .undefined(name)
        default: return .undefined(name)
        }
    }

    func item(_ base: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
        switch (base, key) {
        case (.list(let l), .int(let i)):
            let j = i < 0 ? l.count + i : i
            return j >= 0 && j < l.count ? l[j] : .undefined("[\(i)]")
        case (.string(let s), .int(let i)):
            let chars = Array(s)
            let j = i < 0 ? chars.count + i : i
            return j >= 0 && j < chars.count ? .string(String(chars[j])) : .undefined("[\(i)]")
        case (.dict, .string(let k)), (.namespace, .string(let k)): return try attribute(base, k)
        case (.undefined(let n), _): throw JinjaError("'\(n)' is undefined (indexing it)")
        default: return .undefined("[\(key.repr)]")
        }
    }

    func slice(_ base: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?) throws -> JinjaValue {
        func int(_ v: JinjaValue?) throws -> Int? {
            guard let v, !(v.isUndefined) else { return nil }
            if case .none = v { return nil }
            guard case .int(let i) = v else { throw JinjaError("slice indices must be integers") }
            return i
        }
        let step = try int(c) ?? 1
        guard step != 0 else { throw JinjaError("slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            func clamp(_ x: Int?, _ def: Int) -> Int {
                guard var x else { return def }
                if x < 0 { x += n }
                return step > 0 ? min(max(x, 0), n) : min(max(x, -1), n - 1)
            }
            let start = clamp(try int(a), step > 0 ? 0 : n - 1)
            let stop = clamp(try int(b), step > 0 ? n : -1)
            return Array(stride(from: start, to: stop, by: step))
        }
        switch base {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .string(let s):
            let chars = Array(s)
            return .string(String(try indices(chars.count).map { chars[$0] }))
        default: throw JinjaError("cannot slice \(base.typeName)")
        }
    }

    func binary(_ op: String, _ l: JinjaValue, _ r: JinjaValue) throws -> JinjaValue {
        switch op {
        case "==": return .bool(l.equals(r))
        case "!=": return .bool(!l.equals(r))
        case "<", ">", "<=", ">=":
            let c: Int
            if let a = l.number, let b = r.number {
                c = a < b ? -1 : (a > b ? 1 : 0)
            } else if case .string(let a) = l, case .string(let b) = r {
                c = a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars) ? -1 : (a == b ? 0 : 1)
            } else {
                throw JinjaError("cannot compare \(l.typeName) and \(r.typeName)")
            }
            switch op {
            case "<": return .bool(c < 0)
            case ">": return .bool(c > 0)
            case "<=": return .bool(c <= 0)
            default: return .bool(c >= 0)
            }
        case "in":
            switch r {
            case .string(let s):
                guard case .string(let sub) = l else { throw JinjaError("'in <string>' needs a string on the left") }
                return .bool(sub.isEmpty || s.contains(sub))
            case .list(let items): return .bool(items.contains { $0.equals(l) })
            case .dict(let d):
                guard case .string(let k) = l else { return .bool(false) }
                return .bool(d.contains { $0.0 == k })
            case .undefined(let n): throw JinjaError("'\(n)' is undefined (testing membership)")
            default: throw JinjaError("argument of type \(r.typeName) is not iterable")
            }
        case "~": return .string(l.str + r.str)
        case "+":
            switch (l, r) {
            case let (.string(a), .string(b)): return .string(a + b)
            case let (.list(a), .list(b)): return .list(a + b)
            case let (.int(a), .int(b)): return .int(a &+ b)
            default:
                if let a = l.number, let b = r.number { return .double(a + b) }
                throw JinjaError("unsupported operand types for +: \(l.typeName) and \(r.typeName)")
            }
        case "-", "*", "/", "//", "%", "**":
            if case .int(let a) = l, case .int(let b) = r {
                switch op {
                case "-": return .int(a &- b)
                case "*": return .int(a &* b)
                case "//":
                    guard b != 0 else { throw JinjaError("division by zero") }
                    return .int(Int((Double(a) / Double(b)).rounded(.down)))
                case "%":
                    guard b != 0 else { throw JinjaError("modulo by zero") }
                    let m = a % b
                    return .int(m != 0 && (m < 0) != (b < 0) ? m + b : m)
                case "**": return b >= 0 ? .int(Int(pow(Double(a), Double(b)))) : .double(pow(Double(a), Double(b)))
                default: break
                }
            }
            if op == "*", case .string(let s) = l, case .int(let n) = r { return .string(String(repeating: s, count: max(n, 0))) }
            guard let a = l.number, let b = r.number else {
                throw JinjaError("unsupported operand types for \(op): \(l.typeName) and \(r.typeName)")
            }
            switch op {
            case "-": return .double(a - b)
            case "*": return .double(a * b)
            case "/":
                guard b != 0 else { throw JinjaError("division by zero") }
                return .double(a / b)
            case "//": return .double((a / b).rounded(.down))
            case "%": return .double(a - b * (a / b).rounded(.down))
            default: return .double(pow(a, b))
            }
        default: throw JinjaError("unsupported operator \(op)")
        }
    }

    func callValue(_ f: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)], caller: JinjaMacro?) throws -> JinjaValue {
        switch f {
        case .macro(let m):
            var frame: [String: JinjaValue] = [:]
            for (i, (name, def)) in m.params.enumerated() {
                if i < args.count { frame[name] = args[i] } else if let kw = kwargs.last(where: { $0.0 == name }) { frame[name] = kw.1 } else if let def { frame[name] = try eval(def) } else { frame[name] = .undefined(name) }
            }
            frame["varargs"] = .list(Array(args.dropFirst(m.params.count)))
            if let caller { frame["caller"] = .macro(caller) }
            scopes.append(frame)
            defer { scopes.removeLast() }
            var s = ""
            try run(m.body, into: &s)
            return .string(s)
        case .function(let name): return try JinjaBuiltins.call(name, args, kwargs)
        case .method(let base, let name): return try JinjaBuiltins.method(base, name, args, kwargs)
        case .loopCycler(_, let idx):
            guard !args.isEmpty else { throw JinjaError("loop.cycle needs arguments") }
            return args[idx % args.count]
        case .undefined(let n): throw JinjaError("'\(n)' is undefined (calling it)")
        default: throw JinjaError("\(f.typeName) is not callable")
        }
    }
}
