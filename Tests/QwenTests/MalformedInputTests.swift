import Foundation
import QwenFormats
import QwenModel
import QwenRuntime
import XCTest

/// Broken model files give an error naming the file and the problem; nothing crashes.
final class MalformedInputTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws { dir = try temporaryDirectory(self) }

    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let p = dir + "/" + name
        FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }

    func safetensors(header: String, data: [UInt8] = []) -> [UInt8] {
        let h = Array(header.utf8)
        var out = withUnsafeBytes(of: UInt64(h.count).littleEndian, Array.init)
        out += h + data
        return out
    }

    func assertError(_ body: @autoclosure () throws -> Any, file path: String, mentions words: [String],
                     line: UInt = #line) {
        XCTAssertThrowsError(try body(), line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path), "error does not name \(path): \(text)", line: line)
            for w in words { XCTAssertTrue(text.contains(w), "error does not mention \(w): \(text)", line: line) }
        }
    }

    func testSafetensorsProblems() throws {
        let short = write("short.safetensors", [1, 2, 3])
        assertError(try SafetensorsFile(path: short), file: short, mentions: ["too short"])

        let past = write("past.safetensors", withUnsafeBytes(of: UInt64(1000).littleEndian, Array.init) + Array("{}".utf8))
        assertError(try SafetensorsFile(path: past), file: past, mentions: ["header length"])

        let badJSON = write("bad.safetensors", safetensors(header: "{not json"))
        assertError(try SafetensorsFile(path: badJSON), file: badJSON, mentions: ["JSON"])

        let dtype = write("dtype.safetensors", safetensors(header: #"{"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)))
        assertError(try SafetensorsFile(path: dtype), file: dtype, mentions: ["unsupported dtype I64"])

        let truncated = write("trunc.safetensors", safetensors(header: #"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: [0, 0, 0, 0]))
        assertError(try SafetensorsFile(path: truncated), file: truncated, mentions: ["past the end"])

        let mismatch = write("mm.safetensors", safetensors(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, data: Array(repeating: 0, count: 16)))
        assertError(try SafetensorsFile(path: mismatch), file: mismatch, mentions: ["do not match shape"])

        let ok = write("ok.safetensors", safetensors(header: #"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, data: Array(repeating: 0, count: 16)))
        let f = try SafetensorsFile(path: ok)
        assertError(try f.floats("w", shape: [4, 1]), file: ok, mentions: ["shape [2, 2], expected [4, 1]"])
        assertError(try f.floats("nope"), file: ok, mentions: ["missing tensor nope"])
    }

    /// A copy of a fixture checkpoint with one file changed.
    func brokenCopy(of fixture: String, _ change: (String) throws -> Void) throws -> String {
        let d = dir + "/" + fixture
        try FileManager.default.copyItem(atPath: Fixtures.path(fixture), toPath: d)
        try change(d)
        return d
    }

    func testMissingTensorAndShapeMismatchInACheckpoint() throws {
        // Remove one tensor from the index of the sharded Qwen2 checkpoint's weight map.
        let d = try brokenCopy(of: "qwen2-tiny") { d in
            let p = d + "/model.safetensors.index.json"
            var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            var map = obj["weight_map"] as! [String: String]
            map["model.layers.1.mlp.up_proj.weight"] = nil
            obj["weight_map"] = map
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: p))
        }
        assertError(try LoadedModel.load(path: d), file: d, mentions: ["missing tensor model.layers.1.mlp.up_proj.weight"])

        let d2 = try brokenCopy(of: "qwen3-tiny-f32") { d in
            let p = d + "/config.json"
            var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            obj["intermediate_size"] = 100
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: p))
        }
        assertError(try LoadedModel.load(path: d2), file: d2, mentions: ["gate_proj.weight has shape [96, 64], expected [100, 64]"])
    }

    func testBadConfigJSON() throws {
        let d = try brokenCopy(of: "qwen3-tiny-f32") { d in
            try Data("{\"hidden_size\": ".utf8).write(to: URL(fileURLWithPath: d + "/config.json"))
        }
        assertError(try LoadedModel.load(path: d), file: d + "/config.json", mentions: ["JSON"])

        let d2 = try brokenCopy(of: "qwen2-tiny") { d in
            let p = d + "/config.json"
            var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            obj["architectures"] = ["LlamaForCausalLM"]
            obj["model_type"] = "llama"
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: p))
        }
        assertError(try LoadedModel.load(path: d2), file: d2 + "/config.json", mentions: ["unsupported architecture LlamaForCausalLM"])
    }

    func testGGUFProblems() throws {
        let good = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.path("qwen3-tiny.gguf"))))

        let magic = write("magic.gguf", [0x47, 0x47, 0x55, 0x41] + good.dropFirst(4))
        assertError(try GGUFFile(path: magic), file: magic, mentions: ["bad magic"])

        // Cut in the metadata, and cut in the tensor data.
        for cut in [40, good.count / 3, good.count - 100] {
            let p = write("trunc\(cut).gguf", Array(good.prefix(cut)))
            assertError(try GGUFFile(path: p), file: p, mentions: ["past the end"])
        }

        // An unknown tensor type: find the first tensor's type field by parsing the header.
        let g = try GGUFFile(path: Fixtures.path("qwen3-tiny.gguf"))
        let first = try XCTUnwrap(g.tensors.values.min { $0.offset < $1.offset })
        var bytes = good
        let name = Array(first.ggufName.utf8)
        let at = try XCTUnwrap(findSubsequence(bytes, name))
        let typeOffset = at + name.count + 4 + 8 * first.dims.count
        bytes.replaceSubrange(typeOffset..<typeOffset + 4, with: [99, 0, 0, 0])
        let badType = write("type.gguf", bytes)
        assertError(try GGUFFile(path: badType), file: badType, mentions: ["unknown tensor type 99"])

        let empty = write("empty.gguf", [])
        assertError(try GGUFFile(path: empty), file: empty, mentions: ["past the end"])
    }

    func testCommandLineNamesTheFile() throws {
        let p = write("junk.gguf", Array("this is not a model".utf8))
        let (status, out, err) = try runProcess(Fixtures.binary, ["generate", "--model", p, "--prompt", "hi"])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(out, "")
        XCTAssertTrue(err.contains(p) && err.contains("not a GGUF file"), err)

        let (s2, _, e2) = try runProcess(Fixtures.binary, ["generate", "--model", dir + "/nothing-here", "--prompt", "hi"])
        XCTAssertEqual(s2, 1)
        XCTAssertTrue(e2.contains("nothing-here"), e2)
    }

    func findSubsequence(_ hay: [UInt8], _ needle: [UInt8]) -> Int? {
        guard needle.count <= hay.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<i + needle.count]) == needle {
            return i
        }
        return nil
    }
}
