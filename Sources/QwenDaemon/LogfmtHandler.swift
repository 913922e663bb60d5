import Foundation
import Logging

/// swift-log output for journald and log shippers: one line per event on stderr, either
/// logfmt (`ts=… level=info logger=qwen-serve msg="…" key=value`) or a JSON object.
/// journald keeps stderr, so `journalctl -u qwen-serve` shows these lines as they are.
public struct LogfmtHandler: LogHandler {
    public enum Format: String, Sendable { case text, json }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let format: Format
    private static let lock = NSLock()

    public init(label: String, level: Logger.Level, format: Format) {
        self.label = label
        self.logLevel = level
        self.format = format
    }

    /// Installs the handler for every logger of the process (call once, at start-up).
    public static func bootstrap(level: Logger.Level, format: Format) {
        LoggingSystem.bootstrap { LogfmtHandler(label: $0, level: level, format: format) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [("ts", Self.timestamp()), ("level", event.level.rawValue), ("logger", label),
                                          ("msg", "\(event.message)")]
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for (k, v) in merged.sorted(by: { $0.key < $1.key }) { fields.append((k, "\(v)")) }
        let line: String
        switch format {
        case .text: line = fields.map { "\($0)=\(Self.quoted($1))" }.joined(separator: " ")
        case .json:
            let obj = Dictionary(fields, uniquingKeysWith: { _, b in b })
            let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            line = String(decoding: data, as: UTF8.self)
        }
        Self.lock.lock()
        FileHandle.standardError.write(Data((line + "\n").utf8))
        Self.lock.unlock()
    }

    static func quoted(_ s: String) -> String {
        let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { $0.value > 0x20 && $0 != "\"" && $0 != "=" && $0 != "\\" && $0.value < 0x7F }
        if plain { return s }
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }

    static func timestamp() -> String {
        var tv = timeval()
        gettimeofday(&tv, nil)
        var t = time_t(tv.tv_sec)
        var tm = tm()
        gmtime_r(&t, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                      tm.tm_hour, tm.tm_min, tm.tm_sec, Int(tv.tv_usec / 1000))
    }
}
