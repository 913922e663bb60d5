import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Downloads a model repository from the Hugging Face hub (or the mirror in
/// `HF_ENDPOINT`) into the cache: only the files the runtime reads, each into a
/// `.incomplete` file that resumes with a Range request, verified against the sha256
/// the hub reports for LFS files, then renamed into place.
public struct HubDownloader {
    public let endpoint: String
    public let revision: String
    public let cacheDirectory: String
    let token: String?

    public init(endpoint: String? = nil, revision: String = "main", cacheDirectory: String = ModelLocator.cacheDirectory) {
        let env = ProcessInfo.processInfo.environment
        var e = endpoint ?? env["HF_ENDPOINT"] ?? "https://huggingface.co"
        while e.hasSuffix("/") { e.removeLast() }
        self.endpoint = e
        self.revision = revision
        self.cacheDirectory = cacheDirectory
        token = env["HF_TOKEN"]
    }

    typealias Error = ModelLocator.LocateError

    static let wanted: Set<String> = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                      "model.safetensors", "model.safetensors.index.json", "chat_template.jinja"]

    public func download(repo: String, log: (String) -> Void) throws -> String {
        let target = cacheDirectory + "/hub/" + repo.replacingOccurrences(of: "/", with: "--") + "/" + revision
        let done = target + "/.complete"
        if FileManager.default.fileExists(atPath: done) { return target }
        if ProcessInfo.processInfo.environment["HF_HUB_OFFLINE"] == "1" {
            throw Error(description: "\(repo) is not in the cache (\(target)) and HF_HUB_OFFLINE=1")
        }
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        log("downloading \(repo) from \(endpoint) into \(target)")
        let listing = try fetchJSON("\(endpoint)/api/models/\(repo)/revision/\(revision)", what: repo)
        guard let siblings = listing["siblings"] as? [[String: Any]] else {
            throw Error(description: "\(endpoint): the listing of \(repo) has no files")
        }
        let names = siblings.compactMap { $0["rfilename"] as? String }
        var files = names.filter { Self.wanted.contains($0) }
        if names.contains("model.safetensors.index.json") {
            let indexPath = try fetchFile(repo: repo, file: "model.safetensors.index.json", into: target, log: log)
            guard let data = FileManager.default.contents(atPath: indexPath),
                  let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                  let map = obj["weight_map"] as? [String: String] else {
                throw Error(description: "\(indexPath): not a valid safetensors index")
            }
            files += Set(map.values).sorted()
        }
        guard files.contains("config.json"), files.contains("tokenizer.json"),
              files.contains(where: { $0.hasSuffix(".safetensors") }) else {
            throw Error(description: "\(repo) has no config.json, tokenizer.json and safetensors weights; it is not a model this runtime reads")
        }
        for f in files where f.hasSuffix(".safetensors") && f.contains("/") {
            throw Error(description: "\(repo): shard \(f) is in a subfolder, which is not supported")
        }
        for f in files { _ = try fetchFile(repo: repo, file: f, into: target, log: log) }
        FileManager.default.createFile(atPath: done, contents: Data())
        return target
    }

    func request(_ url: String, range: Int? = nil, method: String = "GET") throws -> URLRequest {
        guard let u = URL(string: url) else { throw Error(description: "bad URL \(url)") }
        var r = URLRequest(url: u, timeoutInterval: 30)
        r.httpMethod = method
        if let token { r.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let range { r.setValue("bytes=\(range)-", forHTTPHeaderField: "Range") }
        return r
    }

    func fetchJSON(_ url: String, what: String) throws -> [String: Any] {
        let (data, response) = try send(request(url), to: nil)
        guard response.statusCode == 200 else {
            throw Error(description: "\(url): HTTP \(response.statusCode)\(response.statusCode == 404 ? " (no such repo or revision: \(what))" : "")")
        }
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw Error(description: "\(url): the answer is not JSON")
        }
        return obj
    }

    /// Downloads one file, resuming a previous partial download; returns its path.
    func fetchFile(repo: String, file: String, into dir: String, log: (String) -> Void) throws -> String {
        let dest = dir + "/" + file
        if FileManager.default.fileExists(atPath: dest) { return dest }
        let partial = dest + ".incomplete"
        let have = (try? FileManager.default.attributesOfItem(atPath: partial)[.size] as? Int) ?? 0
        let url = "\(endpoint)/\(repo)/resolve/\(revision)/\(file)"
        let (_, response) = try send(request(url, range: have > 0 ? have : nil), to: partial, append: have > 0)
        guard response.statusCode == 200 || response.statusCode == 206 else {
            try? FileManager.default.removeItem(atPath: partial)
            throw Error(description: "\(url): HTTP \(response.statusCode)")
        }
        // LFS files carry their sha256 as the (linked) ETag.
        let etag = (response.value(forHTTPHeaderField: "X-Linked-Etag") ?? response.value(forHTTPHeaderField: "ETag") ?? "")
            .trimmingCharacters(in: CharacterSet(charactersIn: "\"W/"))
        if etag.count == 64, etag.allSatisfy(\.isHexDigit) {
            let got = try SHA256.hexDigest(ofFile: partial)
            guard got == etag.lowercased() else {
                try? FileManager.default.removeItem(atPath: partial)
                throw Error(description: "\(file) from \(repo): sha256 \(got) does not match the hub's \(etag)")
            }
        }
        guard rename(partial, dest) == 0 else { throw Error(description: "cannot move \(partial) into place") }
        log("  \(file)")
        return dest
    }

    /// Sends a request; with `to`, streams the body into that file as it arrives (appending
    /// for a resumed 206), so an interrupted download keeps what it had.
    func send(_ req: URLRequest, to file: String?, append: Bool = false) throws -> (Data, HTTPURLResponse) {
        let sink = Sink(file: file, append: append)
        let session = URLSession(configuration: .ephemeral, delegate: sink, delegateQueue: nil)
        session.dataTask(with: req).resume()
        sink.done.wait()
        session.finishTasksAndInvalidate()
        if let e = sink.error {
            throw Error(description: "cannot reach \(req.url?.absoluteString ?? "?") (offline, or HF_ENDPOINT wrong?): \(e.localizedDescription)")
        }
        if let e = sink.writeError { throw Error(description: "\(file ?? "?"): \(e)") }
        guard let http = sink.response else { throw Error(description: "\(req.url?.absoluteString ?? "?"): no HTTP response") }
        return (sink.data, http)
    }

    final class Sink: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        let file: String?
        let append: Bool
        let done = DispatchSemaphore(value: 0)
        var data = Data()
        var response: HTTPURLResponse?
        var error: Swift.Error?
        var writeError: String?
        var handle: FileHandle?

        init(file: String?, append: Bool) {
            self.file = file
            self.append = append
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                        completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
            self.response = response as? HTTPURLResponse
            let status = self.response?.statusCode ?? 0
            if let file, status == 200 || status == 206 {
                if !(status == 206 && append) || !FileManager.default.fileExists(atPath: file) {
                    FileManager.default.createFile(atPath: file, contents: nil)
                }
                handle = FileHandle(forWritingAtPath: file)
                _ = try? handle?.seekToEnd()
                if handle == nil { writeError = "cannot open for writing" }
            }
            completionHandler(.allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            if let handle {
                do { try handle.write(contentsOf: data) } catch { writeError = "\(error)" }
            } else if file == nil || (response?.statusCode ?? 0) >= 400 {
                self.data.append(data)
            }
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Swift.Error?) {
            self.error = error
            try? handle?.close()
            done.signal()
        }
    }
}
