import Foundation
import CQwenKernels

/// OpenBLAS, loaded on first use with the kernel set chosen for this CPU.
public enum BLAS {
    public struct Info: Sendable {
        /// The kernel set OpenBLAS reports (e.g. "SkylakeX").
        public let coreName: String
        /// What this process set OPENBLAS_CORETYPE to, or nil when it kept the user's choice.
        public let chosenCoreType: String?
        public let config: String
        public let threads: Int
    }

    public struct LoadError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Loads OpenBLAS (once). Every entry point that computes calls this first.
    @discardableResult
    public static func load() throws -> Info {
        try CPUFeatures.checkLevelRequest()
        var err = [CChar](repeating: 0, count: 512)
        var chosen = [CChar](repeating: 0, count: 64)
        let rc = qwen_blas_load(&err, Int32(err.count), &chosen, Int32(chosen.count))
        guard rc == 0 else { throw LoadError(description: String(cString: err)) }
        let c = String(cString: chosen)
        return Info(
            coreName: String(cString: qwen_blas_corename()),
            chosenCoreType: c.isEmpty ? nil : c,
            config: String(cString: qwen_blas_config()),
            threads: Int(qwen_blas_num_threads())
        )
    }

    public static func setThreads(_ n: Int) { qwen_blas_set_num_threads(Int32(n)) }

    /// Row-major C[M×N] = alpha · op(A) · op(B) + beta · C.
    @inline(__always)
    public static func sgemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        qwen_sgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), alpha,
                   a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

public enum CPUFeatures {
    public static var hasAVX512: Bool { qwen_cpu_has_avx512() != 0 }
    public static var hasAVX512BF16: Bool { qwen_cpu_has_avx512bf16() != 0 }
    public static var hasAVX512VNNI: Bool { qwen_cpu_has_avx512vnni() != 0 }
    public static var hasAVX2: Bool { qwen_cpu_has_avx2() != 0 }
    public static var hasAVXVNNI: Bool { qwen_cpu_has_avxvnni() != 0 }
    /// The int8 kernel set products use: "vnni", "avxvnni", "avx2" or "portable" (QWEN_INT8_KERNEL
    /// forces one, also "vnni256").
    public static var int8Kernel: String { String(cString: qwen_i8_kernel_name(qwen_i8_kernel())) }
    /// The OpenBLAS core type that suits the kernel level ("" off x86-64).
    public static var openBLASCoreType: String { String(cString: qwen_cpu_coretype()) }
    /// The kernel level every C kernel dispatches on: "avx512", "avx2" or "portable" — the best
    /// this CPU has, capped by QWEN_CPU_LEVEL.
    public static var level: String { String(cString: qwen_cpu_level_name(qwen_cpu_level())) }
    /// The best level this CPU has, whatever QWEN_CPU_LEVEL says.
    public static var hardwareLevel: String { String(cString: qwen_cpu_level_name(qwen_cpu_hardware_level())) }
    /// Every level this CPU can run, best first (what the tests run at).
    public static var runnableLevels: [String] {
        (0...Int(qwen_cpu_hardware_level())).reversed().map { String(cString: qwen_cpu_level_name(Int32($0))) }
    }
    /// The names QWEN_CPU_LEVEL takes.
    public static let levelNames = ["avx512", "avx2", "portable"]

    /// Fails with a message naming the value when QWEN_CPU_LEVEL is set to something that is not
    /// a level (the kernels would ignore it and run the best level).
    public static func checkLevelRequest() throws {
        guard qwen_cpu_level_request_valid() == 0 else { return }
        let value = ProcessInfo.processInfo.environment["QWEN_CPU_LEVEL"] ?? ""
        throw CPULevelError(message: "QWEN_CPU_LEVEL=\(value) is not a kernel level; use one of \(levelNames.joined(separator: ", "))")
    }
}

public struct CPULevelError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
