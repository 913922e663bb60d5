import ArgumentParser
import Foundation
import QwenKernels

/// What this CPU gets: the kernel level (and every level it can run, which `make test` loops
/// over), the int8 kernel set and OpenBLAS's core type.
struct CPUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu",
        abstract: "Show the kernel level and kernel sets this CPU runs (QWEN_CPU_LEVEL caps the level).")

    @Flag(name: .customLong("levels"), help: "Print only the levels this CPU can run, best first, one a line.")
    var levelsOnly = false

    func run() throws {
        try reportingErrors {
            try CPUFeatures.checkLevelRequest()
            if levelsOnly {
                print(CPUFeatures.runnableLevels.joined(separator: "\n"))
                return
            }
            print("""
                level: \(CPUFeatures.level)\(CPUFeatures.level != CPUFeatures.hardwareLevel ? " (capped by QWEN_CPU_LEVEL)" : "")
                cpu: \(CPUFeatures.hardwareLevel)
                runnable: \(CPUFeatures.runnableLevels.joined(separator: " "))
                int8 kernels: \(CPUFeatures.int8Kernel)
                openblas core type: \(CPUFeatures.openBLASCoreType.isEmpty ? "(OpenBLAS's own choice)" : CPUFeatures.openBLASCoreType)
                """)
        }
    }
}
