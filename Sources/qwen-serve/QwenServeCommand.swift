import ArgumentParser
import Foundation
import Logging
import QwenFormats
import QwenKernels
import QwenModel
import QwenRuntime

@main
struct QwenServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qwen-serve",
        abstract: "Qwen3 / Qwen2.5 inference on the CPU.",
        subcommands: [Serve.self, Generate.self, Fetch.self, Bench.self, FuseCommand.self, QuantizeCommand.self, LoRACommand.self, GrammarCommand.self, CPUCommand.self])
}

/// The server's structured logger once `serve` has set up logging; nil for the other commands.
enum ProcessLog {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var current: Logger?
    static var logger: Logger? {
        get { lock.withLock { current } }
        set { lock.withLock { current = newValue } }
    }
}

/// Messages for the operator, on stderr (stdout carries only generated text): structured
/// lines under `serve`, plain lines for the other commands.
func log(_ s: String) { log(s, level: .info) }

func log(_ s: String, level: Logger.Level) {
    if let l = ProcessLog.logger {
        l.log(level: level, "\(s)")
    } else {
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}

/// Runs `body`, turning any error into a one-line message and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch {
        log("qwen-serve: \(error)", level: .error)
        throw ExitCode(1)
    }
}

extension F32Weights: ExpressibleByArgument {}
extension ComputeMode: ExpressibleByArgument {}
extension ComputeChoice: ExpressibleByArgument {}
extension QuantizeType: ExpressibleByArgument {}
extension KVCacheDType: ExpressibleByArgument {}
