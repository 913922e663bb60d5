/// Recursive-descent parser for the Jinja subset chat templates use, with Jinja's
/// operator precedence (filters and tests bind tighter than arithmetic).
struct JinjaParser {
    private var segments: [JinjaLexer.Segment]
    private var pos = 0

    init(_ template: String) throws { segments = try JinjaLexer.segments(template) }

    mutating func parse() throws -> [JinjaNode] {
        let (nodes, end) = try parseBody(until: [])
        if let end { throw JinjaError("unexpected {% \(end) %}") }
        return nodes
    }

    /// Parses nodes until a block tag whose first word is in `until`; returns that word.
    private mutating func parseBody(until: Set<String>) throws -> ([JinjaNode], String?) {
        var nodes: [JinjaNode] = []
        while pos < segments.count {
            let seg = segments[pos]
            pos += 1
            switch seg {
            case .text(let t): nodes.append(.text(t))
            case .output(let toks, let line):
                var p = ExprParser(tokens: toks, line: line)
                nodes.append(.output(try p.parseFull()))
            case .block(let toks, let line):
                guard case .name(let word)? = toks.first else { throw JinjaError("line \(line): empty block tag") }
                if until.contains(word) {
                    pos -= 1
                    return (nodes, word)
                }
                nodes.append(try parseStatement(word, Array(toks.dropFirst()), line: line))
            }
        }
        if !until.isEmpty { throw JinjaError("missing {% \(until.sorted().joined(separator: " or ")) %} at the end of the template") }
        return (nodes, nil)
    }

    /// The tokens of the block tag at `pos` (which parseBody stopped at), consumed.
    private mutating func take() -> ([JinjaLexer.Token], Int) {
        guard case .block(let toks, let line) = segments[pos] else { fatalError("parser invariant: expected a block tag") }
        pos += 1
        return (Array(toks.dropFirst()), line)
    }

    private mutating func parseStatement(_ word: String, _ rest: [JinjaLexer.Token], line: Int) throws -> JinjaNode {
        var p = ExprParser(tokens: rest, line: line)
        switch word {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var cond = try p.parseFull()
            var otherwise: [JinjaNode] = []
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((cond, body))
                let (toks, l) = take()
                if end == "elif" {
                    var q = ExprParser(tokens: toks, line: l)
                    cond = try q.parseFull()
                    continue
                }
                if end == "else" {
                    let (b, _) = try parseBody(until: ["endif"])
                    otherwise = b
                    _ = take()
                }
                break
            }
            return .ifChain(branches, otherwise: otherwise)
        case "for":
            var targets: [String] = []
            repeat {
                guard case .name(let n)? = p.next() else { throw JinjaError("line \(line): expected a loop variable") }
                targets.append(n)
            } while p.accept(.op(","))
            guard p.accept(.name("in")) else { throw JinjaError("line \(line): expected 'in' in for") }
            let iterable = try p.parseExpression(allowConditional: false)
            var condition: JinjaExpr? = nil
            if p.accept(.name("if")) { condition = try p.parseExpression(allowConditional: false) }
            if p.accept(.name("recursive")) { throw JinjaError("line \(line): recursive loops are not supported") }
            try p.expectEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"])
            _ = take()
            var otherwise: [JinjaNode] = []
            if end == "else" {
                otherwise = try parseBody(until: ["endfor"]).0
                _ = take()
            }
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, otherwise: otherwise)
        case "set":
            let target = try p.parsePrimaryTarget()
            if p.accept(.op("=")) {
                let value = try p.parseFull()
                return .set(target: target, value: value)
            }
            try p.expectEnd()
            guard case .name(let n) = target else { throw JinjaError("line \(line): block set needs a plain name") }
            let (body, _) = try parseBody(until: ["endset"])
            _ = take()
            return .setBlock(name: n, body: body)
        case "macro":
            guard case .name(let name)? = p.next(), p.accept(.op("(")) else { throw JinjaError("line \(line): expected macro name(") }
            var params: [(String, JinjaExpr?)] = []
            while !p.accept(.op(")")) {
                guard case .name(let pn)? = p.next() else { throw JinjaError("line \(line): expected a parameter name") }
                var def: JinjaExpr? = nil
                if p.accept(.op("=")) { def = try p.parseExpression(allowConditional: true) }
                params.append((pn, def))
                if !p.accept(.op(",")) { try p.expect(.op(")")); break }
            }
            try p.expectEnd()
            let (body, _) = try parseBody(until: ["endmacro"])
            _ = take()
            return .macro(name: name, params: params, body: body)
        case "call":
            let call = try p.parseFull()
            let (body, _) = try parseBody(until: ["endcall"])
            _ = take()
            return .callBlock(call: call, body: body)
        case "filter":
            guard case .name(let f)? = p.next() else { throw JinjaError("line \(line): expected a filter name") }
            var args: [JinjaExpr] = []
            if p.accept(.op("(")) { (args, _) = try p.parseArguments() }
            try p.expectEnd()
            let (body, _) = try parseBody(until: ["endfilter"])
            _ = take()
            return .filterBlock(filter: f, args: args, body: body)
        case "generation":
            // transformers' assistant-mask extension: renders its body unchanged.
            let (body, _) = try parseBody(until: ["endgeneration"])
            _ = take()
            return .sequence(body)
        case "break": try p.expectEnd(); return .loopBreak
        case "continue": try p.expectEnd(); return .loopContinue
        default:
            throw JinjaError("line \(line): unsupported tag {% \(word) %}")
        }
    }
}

/// Parses the tokens inside one tag.
struct ExprParser {
    let tokens: [JinjaLexer.Token]
    let line: Int
    var i = 0

    init(tokens: [JinjaLexer.Token], line: Int) {
        self.tokens = tokens
        self.line = line
    }

    var peek: JinjaLexer.Token? { i < tokens.count ? tokens[i] : nil }

    mutating func next() -> JinjaLexer.Token? {
        defer { i += 1 }
        return peek
    }

    mutating func accept(_ t: JinjaLexer.Token) -> Bool {
        if peek == t { i += 1; return true }
        return false
    }

    mutating func expect(_ t: JinjaLexer.Token) throws {
        guard accept(t) else { throw JinjaError("line \(line): expected \(t), found \(peek.map { "\($0)" } ?? "end of tag")") }
    }

    func expectEnd() throws {
        if let t = peek { throw JinjaError("line \(line): unexpected \(t)") }
    }

    mutating func parseFull() throws -> JinjaExpr {
        let e = try parseExpression(allowConditional: true)
        try expectEnd()
        return e
    }

    /// A `set` target: a name or name.attribute (namespace assignment).
    mutating func parsePrimaryTarget() throws -> JinjaExpr {
        guard case .name(let n)? = next() else { throw JinjaError("line \(line): expected a name to set") }
        if accept(.op(".")) {
            guard case .name(let a)? = next() else { throw JinjaError("line \(line): expected an attribute name") }
            return .attribute(.name(n), a)
        }
        if peek == .op(",") { throw JinjaError("line \(line): multiple assignment targets are not supported") }
        return .name(n)
    }

    mutating func parseExpression(allowConditional: Bool) throws -> JinjaExpr {
        let e = try parseOr()
        if allowConditional && accept(.name("if")) {
            let cond = try parseOr()
            var otherwise: JinjaExpr? = nil
            if accept(.name("else")) { otherwise = try parseExpression(allowConditional: true) }
            return .conditional(cond, then: e, otherwise: otherwise)
        }
        return e
    }

    mutating func parseOr() throws -> JinjaExpr {
        var e = try parseAnd()
        while accept(.name("or")) { e = .or(e, try parseAnd()) }
        return e
    }

    mutating func parseAnd() throws -> JinjaExpr {
        var e = try parseNot()
        while accept(.name("and")) { e = .and(e, try parseNot()) }
        return e
    }

    mutating func parseNot() throws -> JinjaExpr {
        if accept(.name("not")) { return .not(try parseNot()) }
        return try parseCompare()
    }

    mutating func parseCompare() throws -> JinjaExpr {
        var e = try parseConcat()
        while true {
            if case .op(let o)? = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                i += 1
                e = .binary(o, e, try parseConcat())
            } else if accept(.name("in")) {
                e = .binary("in", e, try parseConcat())
            } else if peek == .name("not"), i + 1 < tokens.count, tokens[i + 1] == .name("in") {
                i += 2
                e = .not(.binary("in", e, try parseConcat()))
            } else {
                return e
            }
        }
    }

    mutating func parseConcat() throws -> JinjaExpr {
        var e = try parseAdd()
        while accept(.op("~")) { e = .binary("~", e, try parseAdd()) }
        return e
    }

    mutating func parseAdd() throws -> JinjaExpr {
        var e = try parseMul()
        while case .op(let o)? = peek, o == "+" || o == "-" {
            i += 1
            e = .binary(o, e, try parseMul())
        }
        return e
    }

    mutating func parseMul() throws -> JinjaExpr {
        var e = try parsePow()
        while case .op(let o)? = peek, ["*", "/", "//", "%"].contains(o) {
            i += 1
            e = .binary(o, e, try parsePow())
        }
        return e
    }

    mutating func parsePow() throws -> JinjaExpr {
        var e = try parseUnary()
        while accept(.op("**")) { e = .binary("**", e, try parseUnary()) }
        return e
    }

    mutating func parseUnary() throws -> JinjaExpr {
        if accept(.op("-")) { return try parseFilters(.unary("-", try parseUnary(withFilters: false))) }
        if accept(.op("+")) { return try parseFilters(try parseUnary(withFilters: false)) }
        return try parseUnary(withFilters: true)
    }

    mutating func parseUnary(withFilters: Bool) throws -> JinjaExpr {
        if accept(.op("-")) { return .unary("-", try parseUnary(withFilters: false)) }
        let e = try parsePostfix(try parsePrimary())
        return withFilters ? try parseFilters(e) : e
    }

    mutating func parseFilters(_ start: JinjaExpr) throws -> JinjaExpr {
        var e = start
        while true {
            if accept(.op("|")) {
                guard case .name(let f)? = next() else { throw JinjaError("line \(line): expected a filter name") }
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if accept(.op("(")) { (args, kwargs) = try parseArguments() }
                guard JinjaBuiltins.filters.contains(f) else { throw JinjaError("line \(line): unsupported filter '\(f)'") }
                e = .filter(e, f, args, kwargs)
                e = try parsePostfix(e)
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                guard case .name(let t)? = next() else { throw JinjaError("line \(line): expected a test name") }
                guard JinjaBuiltins.tests.contains(t) else { throw JinjaError("line \(line): unsupported test '\(t)'") }
                var args: [JinjaExpr] = []
                if accept(.op("(")) {
                    (args, _) = try parseArguments()
                } else if let p = peek, case .name(let n) = p, !["and", "or", "else", "if", "in", "not", "is"].contains(n) {
                    args = [try parsePrimary()]
                } else if let p = peek, case .string = p {
                    args = [try parsePrimary()]
                } else if let p = peek, case .int = p {
                    args = [try parsePrimary()]
                }
                e = .test(e, t, args, negated: negated)
            } else {
                return e
            }
        }
    }

    mutating func parseArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
        while !accept(.op(")")) {
            if case .name(let n)? = peek, i + 1 < tokens.count, tokens[i + 1] == .op("=") {
                i += 2
                kwargs.append((n, try parseExpression(allowConditional: true)))
            } else {
                args.append(try parseExpression(allowConditional: true))
            }
            if !accept(.op(",")) { try expect(.op(")")); break }
        }
        return (args, kwargs)
    }

    mutating func parsePostfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var e = start
        while true {
            if accept(.op(".")) {
                if case .name(let a)? = peek { i += 1; e = .attribute(e, a) } else if case .int(let n)? = peek {
                    i += 1
                    e = .item(e, .literal(.int(n)))
                } else { throw JinjaError("line \(line): expected an attribute name") }
            } else if accept(.op("[")) {
                var parts: [JinjaExpr?] = [nil]
                var isSlice = false
                while !accept(.op("]")) {
                    if accept(.op(":")) { isSlice = true; parts.append(nil); continue }
                    parts[parts.count - 1] = try parseExpression(allowConditional: true)
                }
                if isSlice {
                    while parts.count < 3 { parts.append(nil) }
                    e = .slice(e, parts[0], parts[1], parts[2])
                } else {
                    guard let k = parts[0] else { throw JinjaError("line \(line): empty subscript") }
                    e = .item(e, k)
                }
            } else if accept(.op("(")) {
                let (args, kwargs) = try parseArguments()
                e = .call(e, args, kwargs)
            } else {
                return e
            }
        }
    }

    mutating func parsePrimary() throws -> JinjaExpr {
        guard let t = next() else { throw JinjaError("line \(line): unexpected end of expression") }
        switch t {
        case .string(var s):
            while case .string(let more)? = peek { s += more; i += 1 }  // adjacent literals join
            return .literal(.string(s))
        case .int(let n): return .literal(.int(n))
        case .float(let d): return .literal(.double(d))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            if accept(.op(")")) { return .tuple([]) }
            let e = try parseExpression(allowConditional: true)
            if accept(.op(",")) {
                var items = [e]
                while !accept(.op(")")) {
                    items.append(try parseExpression(allowConditional: true))
                    if !accept(.op(",")) { try expect(.op(")")); break }
                }
                return .tuple(items)
            }
            try expect(.op(")"))
            return e
        case .op("["):
            var items: [JinjaExpr] = []
            while !accept(.op("]")) {
                items.append(try parseExpression(allowConditional: true))
                if !accept(.op(",")) { try expect(.op("]")); break }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !accept(.op("}")) {
                let k = try parseExpression(allowConditional: true)
                try expect(.op(":"))
                pairs.append((k, try parseExpression(allowConditional: true)))
                if !accept(.op(",")) { try expect(.op("}")); break }
            }
            return .dict(pairs)
        default:
            throw JinjaError("line \(line): unexpected \(t)")
        }
    }
}
