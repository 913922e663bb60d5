import Foundation
import QwenRuntime
import XCTest

/// Downloads from a hub stand-in on loopback (Tests/Fixtures/fake_hub.py): the listing,
/// sharded weights, sha256 checks, resuming a partial file, and failing fast offline.
final class HubDownloadTests: XCTestCase {
    var hub: Process?
    var hubOutput: Pipe?
    var port = 0

    func startHub(corrupt: String = "") throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", Fixtures.path("fake_hub.py"), "--dir", Fixtures.path("qwen2-tiny"),
                       "--repo", "test-org/tiny-qwen2", "--corrupt", corrupt]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        hub = p
        hubOutput = out
        addTeardownBlock { p.terminate(); p.waitUntilExit() }
        let line = readLine(out.fileHandleForReading)
        port = try XCTUnwrap(Int(line), "fake hub did not print its port: \(line)")
    }

    func readLine(_ h: FileHandle) -> String {
        var bytes: [UInt8] = []
        while let b = try? h.read(upToCount: 1), let c = b.first, c != 10 { bytes.append(c) }
        return String(decoding: bytes, as: UTF8.self)
    }

    func testDownloadsAShardedModelThatThenLoadsAndRuns() throws {
        try startHub()
        let cache = try temporaryDirectory(self)
        let dl = HubDownloader(endpoint: "http://127.0.0.1:\(port)/", cacheDirectory: cache)
        let dir = try dl.download(repo: "test-org/tiny-qwen2", log: { _ in })
        for f in ["config.json", "tokenizer.json", "model.safetensors.index.json", "model-00003-of-00006.safetensors"] {
            let a = FileManager.default.contents(atPath: dir + "/" + f)
            XCTAssertEqual(a, FileManager.default.contents(atPath: Fixtures.path("qwen2-tiny/" + f)), f)
        }
        let loaded = try LoadedModel.load(path: dir)
        XCTAssertEqual(loaded.model.config.layers, 2)
        // A second call is served from the cache (the hub is gone).
        hub?.terminate()
        hub?.waitUntilExit()
        XCTAssertEqual(try dl.download(repo: "test-org/tiny-qwen2", log: { _ in }), dir)
    }

    func testResumesAPartialFile() throws {
        try startHub()
        let cache = try temporaryDirectory(self)
        let dir = cache + "/hub/test-org--tiny-qwen2/main"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let name = "model-00001-of-00006.safetensors"
        let full = try XCTUnwrap(FileManager.default.contents(atPath: Fixtures.path("qwen2-tiny/" + name)))
        FileManager.default.createFile(atPath: dir + "/" + name + ".incomplete", contents: full.prefix(1000))
        _ = try HubDownloader(endpoint: "http://127.0.0.1:\(port)", cacheDirectory: cache).download(repo: "test-org/tiny-qwen2", log: { _ in })
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/" + name), full)
        hub?.terminate()
        hub?.waitUntilExit()
        let log = String(decoding: hubOutput!.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(log.contains("/resolve/main/\(name) bytes=1000-"), log)
    }

    func testRefusesAFileWhoseHashDiffers() throws {
        try startHub(corrupt: "model-00002-of-00006.safetensors")
        let cache = try temporaryDirectory(self)
        XCTAssertThrowsError(try HubDownloader(endpoint: "http://127.0.0.1:\(port)", cacheDirectory: cache)
            .download(repo: "test-org/tiny-qwen2", log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("sha256"), "\(e)")
        }
        let dir = cache + "/hub/test-org--tiny-qwen2/main"
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/model-00002-of-00006.safetensors"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/.complete"))
    }

    func testUnknownRepoAndOfflineFailFastWithAMessage() throws {
        try startHub()
        let cache = try temporaryDirectory(self)
        XCTAssertThrowsError(try HubDownloader(endpoint: "http://127.0.0.1:\(port)", cacheDirectory: cache)
            .download(repo: "test-org/nope", log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("404"), "\(e)")
        }
        let start = Date()
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        XCTAssertThrowsError(try HubDownloader(endpoint: "http://127.0.0.1:1", cacheDirectory: cache)
            .download(repo: "Qwen/Qwen3-0.6B", log: { _ in })) { e in
            XCTAssertTrue("\(e)".contains("cannot reach"), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    }
}
