import Foundation

/// Splits a template into text and tags, applying the whitespace rules that Hugging Face
/// renders chat templates with: `trim_blocks` and `lstrip_blocks` on, plus `-` markers.
struct JinjaLexer {
    enum Segment: Equatable {
        case text(String)
        case output([Token], line: Int)
        case block([Token], line: Int)
    }

    enum Token: Equatable {
        case name(String)
        case string(String)
        case int(Int)
        case float(Double)
        case op(String)
    }

    static func segments(_ template: String) throws -> [Segment] {
        let s = Array(template.unicodeScalars)
        var raw: [(kind: Character, body: String, stripBefore: Bool, stripAfter: Bool, keepLeading: Bool, line: Int)] = []
        var texts: [String] = []
        var text = String.UnicodeScalarView()
        var i = 0
        var line = 1
        while i < s.count {
            if s[i] == "{", i + 1 < s.count, s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#" {
                let kind: Character = s[i + 1] == "{" ? "v" : s[i + 1] == "%" ? "b" : "c"
                let close: [Unicode.Scalar] = kind == "v" ? ["}", "}"] : kind == "b" ? ["%", "}"] : ["#", "}"]
                var j = i + 2
                var stripBefore = false, keepLeading = false
                if j < s.count, s[j] == "-" { stripBefore = true; j += 1 } else if j < s.count, s[j] == "+" { keepLeading = true; j += 1 }
                let bodyStart = j
                var end = -1
                var quote: Unicode.Scalar? = nil
                while j + 1 < s.count {
                    if kind != "c" {
                        if let q = quote {
                            if s[j] == "\\" { j += 2; continue }
                            if s[j] == q { quote = nil }
                            j += 1
                            continue
                        }
                        if s[j] == "'" || s[j] == "\"" { quote = s[j]; j += 1; continue }
                    }
                    if s[j] == close[0] && s[j + 1] == close[1] { end = j; break }
                    j += 1
                }
                guard end >= 0 else { throw JinjaError("line \(line): unclosed tag") }
                var bodyEnd = end
                var stripAfter = false
                if bodyEnd > bodyStart, s[bodyEnd - 1] == "-" { stripAfter = true; bodyEnd -= 1 }
                var body = String.UnicodeScalarView()
                body.append(contentsOf: s[bodyStart..<bodyEnd])
                texts.append(String(text))
                text = String.UnicodeScalarView()
                raw.append((kind, String(body), stripBefore, stripAfter, keepLeading, line))
                for k in i..<(end + 2) where s[k] == "\n" { line += 1 }
                i = end + 2
                // {% raw %} … {% endraw %}: everything up to the end tag is text.
                if kind == "b", String(body).trimmingWhitespace == "raw" {
                    let rest = String(String.UnicodeScalarView(s[i...]))
                    guard let r = rest.range(of: #"\{%-?\s*endraw\s*-?%\}"#, options: .regularExpression) else {
                        throw JinjaError("line \(line): raw without endraw")
                    }
                    let inner = String(rest[..<r.lowerBound])
                    raw[raw.count - 1].body = "__raw__"
                    texts.append(inner)
                    raw.append(("b", "__endraw__", false, rest[r].contains("-%"), false, line))
                    i += rest[..<r.upperBound].unicodeScalars.count
                }
                continue
            }
            if s[i] == "\n" { line += 1 }
            text.append(s[i])
            i += 1
        }
        texts.append(String(text))
        // texts[k] is the text before raw[k]; texts.last follows the last tag.
        for (k, tag) in raw.enumerated() {
            let isBlock = tag.kind != "v"
            if tag.stripBefore {
                texts[k] = texts[k].trimmingTrailingWhitespace
            } else if isBlock && !tag.keepLeading && tag.body != "__endraw__" {
                // lstrip_blocks: spaces and tabs between the line start and the tag go.
                var t = texts[k].unicodeScalars
                var cut = t.endIndex
                while cut > t.startIndex, t[t.index(before: cut)] == " " || t[t.index(before: cut)] == "\t" { cut = t.index(before: cut) }
                if cut == t.startIndex || t[t.index(before: cut)] == "\n" {
                    t.removeSubrange(cut...)
                    texts[k] = String(t)
                }
            }
            if tag.stripAfter {
                texts[k + 1] = texts[k + 1].trimmingLeadingWhitespace
            } else if isBlock && tag.body != "__raw__" {
                // trim_blocks: the first newline after a block tag goes.
                // ("\r\n" is one Character in Swift: removing two would also take the next one, or trap.)
                if texts[k + 1].hasPrefix("\r\n") || texts[k + 1].hasPrefix("\n") { texts[k + 1].removeFirst() }
            }
        }
        var out: [Segment] = []
        for (k, tag) in raw.enumerated() {
            if !texts[k].isEmpty { out.append(.text(texts[k])) }
            switch tag.kind {
            case "v": out.append(.output(try tokenize(tag.body, line: tag.line), line: tag.line))
            case "b":
                if tag.body == "__raw__" || tag.body == "__endraw__" { continue }
                out.append(.block(try tokenize(tag.body, line: tag.line), line: tag.line))
            default: break
            }
        }
        if let last = texts.last, !last.isEmpty { out.append(.text(last)) }
        return out
    }

    static let operators = ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]",
                            "{", "}", ",", ".", ":", "|", "="]

    static func tokenize(_ body: String, line: Int) throws -> [Token] {
        let s = Array(body.unicodeScalars)
        var out: [Token] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            if c == " " || c == "\t" || c == "\n" || c == "\r" { i += 1; continue }
            if c == "'" || c == "\"" {
                var v = String.UnicodeScalarView()
                var j = i + 1
                while j < s.count && s[j] != c {
                    if s[j] == "\\" && j + 1 < s.count {
                        j += 1
                        switch s[j] {
                        case "n": v.append("\n")
                        case "t": v.append("\t")
                        case "r": v.append("\r")
                        case "\\": v.append("\\")
                        case "'": v.append("'")
                        case "\"": v.append("\"")
                        default: v.append("\\"); v.append(s[j])
                        }
                    } else {
                        v.append(s[j])
                    }
                    j += 1
                }
                guard j < s.count else { throw JinjaError("line \(line): unterminated string") }
                out.append(.string(String(v)))
                i = j + 1
                continue
            }
            if c.properties.isAlphabetic || c == "_" {
                var j = i
                while j < s.count && (s[j].properties.isAlphabetic || s[j] == "_" || ("0"..."9").contains(s[j])) { j += 1 }
                out.append(.name(String(String.UnicodeScalarView(s[i..<j]))))
                i = j
                continue
            }
            if ("0"..."9").contains(c) {
                var j = i
                var isFloat = false
                while j < s.count && (("0"..."9").contains(s[j]) || s[j] == "_" || (s[j] == "." && !isFloat && j + 1 < s.count && ("0"..."9").contains(s[j + 1]))) {
                    if s[j] == "." { isFloat = true }
                    j += 1
                }
                let text = String(String.UnicodeScalarView(s[i..<j])).replacingOccurrences(of: "_", with: "")
                if isFloat { out.append(.float(Double(text)!)) } else { out.append(.int(Int(text) ?? 0)) }
                i = j
                continue
            }
            var matched = false
            for op in operators {
                let u = Array(op.unicodeScalars)
                if i + u.count <= s.count && Array(s[i..<i + u.count]) == u {
                    out.append(.op(op))
                    i += u.count
                    matched = true
                    break
                }
            }
            guard matched else { throw JinjaError("line \(line): unexpected character '\(c)'") }
        }
        return out
    }
}

public struct JinjaError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}

extension String {
    var trimmingWhitespace: String { trimmingLeadingWhitespace.trimmingTrailingWhitespace }
    var trimmingLeadingWhitespace: String {
        String(unicodeScalars.drop { $0.properties.isWhitespace })
    }
    var trimmingTrailingWhitespace: String {
        var u = unicodeScalars
        while let l = u.last, l.properties.isWhitespace { u.removeLast() }
        return String(u)
    }
}
