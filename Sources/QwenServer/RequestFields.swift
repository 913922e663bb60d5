import QwenChat

/// Typed reads of a JSON request body, each failure naming the parameter.
struct RequestFields {
    let body: JSONValue

    init(_ body: JSONValue) throws {
        guard body.object != nil else { throw APIError(.badRequest, "the request body must be a JSON object") }
        self.body = body
    }

    func has(_ k: String) -> Bool { body[k].map { !$0.isNull } ?? false }

    func string(_ k: String) throws -> String? {
        guard let v = body[k], !v.isNull else { return nil }
        guard let s = v.string else { throw APIError.badParam(k, "'\(k)' must be a string") }
        return s
    }

    func bool(_ k: String) throws -> Bool? {
        guard let v = body[k], !v.isNull else { return nil }
        guard let b = v.bool else { throw APIError.badParam(k, "'\(k)' must be a boolean") }
        return b
    }

    func int(_ k: String, _ range: ClosedRange<Int>) throws -> Int? {
        guard let v = body[k], !v.isNull else { return nil }
        guard let i = v.int else { throw APIError.badParam(k, "'\(k)' must be an integer") }
        guard range.contains(i) else { throw APIError.badParam(k, "'\(k)' must be between \(range.lowerBound) and \(range.upperBound), got \(i)") }
        return i
    }

    func number(_ k: String, _ range: ClosedRange<Double>) throws -> Double? {
        guard let v = body[k], !v.isNull else { return nil }
        guard let d = v.double, d.isFinite else { throw APIError.badParam(k, "'\(k)' must be a number") }
        guard range.contains(d) else { throw APIError.badParam(k, "'\(k)' must be between \(range.lowerBound) and \(range.upperBound), got \(d)") }
        return d
    }

    /// Longest stop sequence, in UTF-8 bytes: each is matched against every new piece of text.
    static let maxStopBytes = 1024

    /// `stop`: a string or a list of up to 16 strings, none empty or longer than `maxStopBytes`.
    func stops() throws -> [String] {
        guard let v = body["stop"], !v.isNull else { return [] }
        let list: [String]
        if let s = v.string { list = [s] } else {
            guard let a = v.array, a.count <= 16, a.allSatisfy({ $0.string != nil }) else {
                throw APIError.badParam("stop", "'stop' must be a string or a list of at most 16 strings")
            }
            list = a.compactMap(\.string)
        }
        for s in list where s.utf8.count > Self.maxStopBytes {
            throw APIError.badParam("stop", "each 'stop' sequence may be at most \(Self.maxStopBytes) bytes")
        }
        return list
    }
}
