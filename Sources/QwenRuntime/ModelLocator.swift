import Foundation

/// Turns what the user passed as `--model` into a path on disk: a local directory or
/// `.gguf` file as it is, `default` (fetched once into the cache), or a Hugging Face
/// repo id such as `Qwen/Qwen3-0.6B` (downloaded into the cache).
public enum ModelLocator {
    public struct LocateError: Error, CustomStringConvertible { public let description: String }

    public static var cacheDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let c = env["QWEN_SERVE_CACHE"], !c.isEmpty { return c }
        if let x = env["XDG_CACHE_HOME"], !x.isEmpty { return x + "/qwen-serve" }
        return NSHomeDirectory() + "/.cache/qwen-serve"
    }

    public static func resolve(_ spec: String, log: (String) -> Void = { _ in }) throws -> String {
        if spec == "default" { return try DefaultModel.ensure(log: log) }
        if FileManager.default.fileExists(atPath: spec) { return spec }
        if isRepoId(spec) { return try HubDownloader().download(repo: spec, log: log) }
        throw LocateError(description: "--model \(spec): no such file or directory, and not a hub repo id (owner/name)")
    }

    static func isRepoId(_ s: String) -> Bool {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !s.hasPrefix("."), !s.hasPrefix("/") else { return false }
        let ok = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
        return parts.allSatisfy { !$0.isEmpty && $0 != ".." && $0.unicodeScalars.allSatisfy(ok.contains) }
    }
}
