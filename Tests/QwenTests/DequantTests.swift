import Foundation
import QwenFormats
import XCTest

/// Block dequantization of every supported ggml type against gguf-py on random blocks.
final class DequantTests: XCTestCase {
    func testAllTypesMatchGGUFPy() throws {
        let cases = try XCTUnwrap(try Fixtures.json("expected/dequant.json") as? [[String: Any]])
        var seen: Set<String> = []
        for c in cases {
            let name = c["type"] as! String
            let type = try XCTUnwrap(GGMLType(rawValue: UInt32(c["ggml_type"] as! Int)), name)
            XCTAssertEqual(type.description, name)
            let hex = Array((c["bytes"] as! String).utf8)
            var bytes = [UInt8]()
            for i in stride(from: 0, to: hex.count, by: 2) { bytes.append(UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16)!) }
            let want = floats(c["values"])
            var got = [Float](repeating: .nan, count: want.count)
            XCTAssertEqual(bytes.count, want.count / type.blockSize * type.blockBytes, name)
            bytes.withUnsafeBytes { src in
                got.withUnsafeMutableBufferPointer { GGMLDequant.dequantize(type: type, src: src.baseAddress!, dst: $0.baseAddress!, count: want.count) }
            }
            for i in 0..<want.count where got[i] != want[i] {
                XCTFail("\(name)[\(i)]: got \(got[i]), gguf-py \(want[i])")
                break
            }
            seen.insert(name)
        }
        XCTAssertEqual(seen, ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"])
    }
}
