import CQwenKernels
import Foundation
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime
import XCTest

/// Paths and JSON helpers shared by the tests.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path
    static let repo = URL(fileURLWithPath: root).deletingLastPathComponent().deletingLastPathComponent().path
    static let shared = URL(fileURLWithPath: repo).deletingLastPathComponent().appendingPathComponent("shared").path

    static func path(_ rel: String) -> String { root + "/" + rel }

    static func json(_ rel: String) throws -> Any {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: path(rel)), "missing fixture \(rel)")
        return try JSONSerialization.jsonObject(with: data)
    }

    /// The default model, which `make test` fetches first.
    static func defaultModel() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let cache = env["QWEN_SERVE_CACHE"] ?? ((env["XDG_CACHE_HOME"].map { $0 + "/qwen-serve" }) ?? NSHomeDirectory() + "/.cache/qwen-serve")
        let p = cache + "/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        guard FileManager.default.fileExists(atPath: p) else {
            throw XCTSkip("the default model is not at \(p); `make test` fetches it (make model)")
        }
        return p
    }

    /// The built command-line binary, beside the test bundle.
    static var binary: String {
        var dir = Bundle(for: Marker.self).bundleURL
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("qwen-serve").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return repo + "/.build/release/qwen-serve"
    }

    final class Marker {}
}

/// A fresh temporary directory, removed when the test ends.
func temporaryDirectory(_ test: XCTestCase) throws -> String {
    let dir = NSTemporaryDirectory() + "/qwen-serve-test-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    return dir
}

func floats(_ a: Any?) -> [Float] { (a as? [Any] ?? []).map { Float(truncating: $0 as! NSNumber) } }
func ints32(_ a: Any?) -> [Int32] { (a as? [Any] ?? []).map { Int32(truncating: $0 as! NSNumber) } }

/// Runs a process to completion and returns (status, stdout, stderr).
@discardableResult
func runProcess(_ path: String, _ args: [String], environment: [String: String]? = nil) throws -> (Int32, String, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let environment { p.environment = environment }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// A random matrix stored as `type` in 64-byte aligned memory, with its dequantized values.
final class RandomBlocks {
    let bytes: [UInt8]
    let raw: UnsafeMutableRawPointer
    let dense: FloatBuffer

    /// `largest`: every stored value at its type's largest (all bits set), the scales as usual.
    init(_ type: GGMLType, rows: Int, cols: Int, rng: inout SeededRandom, largest: Bool = false) {
        let bytes = randomBlocks(type, rows: rows, cols: cols, rng: &rng, largest: largest)
        let dense = FloatBuffer(count: rows * cols)
        bytes.withUnsafeBytes { GGMLDequant.dequantize(type: type, src: $0.baseAddress!, dst: dense.pointer, count: rows * cols) }
        raw = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
        raw.copyMemory(from: bytes, byteCount: bytes.count)
        self.bytes = bytes
        self.dense = dense
    }

    deinit { raw.deallocate() }
}

/// `rows` rows of `cols` random values stored as `type`: random bytes with the f16 scales (and
/// 16-bit values) made finite and modest.
func randomBlocks(_ type: GGMLType, rows: Int, cols: Int, rng: inout SeededRandom, largest: Bool = false) -> [UInt8] {
    let half: UInt16 = Float16(0.01).bitPattern
    let perRow = type.blockSize == 1 ? cols * type.blockBytes : cols / type.blockSize * type.blockBytes
    var bytes = (0..<(rows * perRow)).map { _ in largest ? 0xFF : UInt8(truncatingIfNeeded: rng.next()) }
    func put(_ off: Int, _ bits: UInt16) { bytes[off] = UInt8(bits & 0xFF); bytes[off + 1] = UInt8(bits >> 8) }
    let bb = type.blockBytes
    for blk in 0..<(bytes.count / bb) {
        let o = blk * bb
        switch type {
        case .q5_0, .q8_0, .q4_0: put(o, half)
        case .q4_1, .q5_1, .q4_K, .q5_K: put(o, half); put(o + 2, half)
        case .q6_K: put(o + 208, half)
        case .bf16: put(o, UInt16(Float(rng.unit() - 0.5).bitPattern >> 16))
        case .f16: put(o, Float16(rng.unit() - 0.5).bitPattern)
        default: break
        }
    }
    return bytes
}

/// How far a model's logits are from transformers' (expected/model_<name>.json): the worst
/// |Δlogit| as a share of each row's spread, and at how many positions the top token agrees.
func logitDistance(_ m: QwenModel, expected name: String) throws -> (worst: Float, agree: Int, rows: Int) {
    let list = try XCTUnwrap(try Fixtures.json("expected/model_\(name).json") as? [[String: Any]])
    let vocab = m.config.vocabSize
    var worst: Float = 0, agree = 0, rows = 0
    for c in list {
        let prompt = (c["prompt"] as! [NSNumber]).map(\.int32Value)
        let logits = (c["logits"] as! [[NSNumber]]).map { $0.map(\.floatValue) }
        let got = try m.forward([.init(cache: KVCache(config: m.config), tokens: prompt, logits: .all)])[0]
        for (r, row) in logits.enumerated() {
            let spread = row.max()! - row.min()!
            for (j, v) in row.enumerated() { worst = max(worst, abs(got[r * vocab + j] - v) / spread) }
            let mine = (0..<vocab).max { got[r * vocab + $0] < got[r * vocab + $1] }!
            agree += mine == row.indices.max { row[$0] < row[$1] }! ? 1 : 0
            rows += 1
        }
    }
    return (worst, agree, rows)
}

/// Runs `body` at every kernel level this CPU can run (AVX-512, AVX2, portable: see
/// QWEN_CPU_LEVEL), best first, and puts the level in effect back afterwards. Kernel tests call
/// it so that one run on an AVX-512 machine checks the AVX2 and portable paths as well.
func forEachCPULevel(_ body: (String) throws -> Void) rethrows {
    let before = qwen_cpu_level()
    defer { _ = qwen_cpu_set_level(before) }
    for level in (0...qwen_cpu_level()).reversed() {
        XCTAssertEqual(qwen_cpu_set_level(level), level)
        try body(String(cString: qwen_cpu_level_name(level)))
    }
}
