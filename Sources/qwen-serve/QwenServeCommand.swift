import ArgumentParser
import Foundation
import QwenKernels
import QwenRuntime

@main
struct QwenServe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qwen-serve",
        abstract: "Qwen3 / Qwen2.5 inference on the CPU.",
        subcommands: [Serve.self, Generate.self, Fetch.self, Bench.self, FuseCommand.self])
}

/// Prints to stderr, so that stdout carries only generated text.
func log(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// Runs `body`, turning any error into a one-line message and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch {
        log("qwen-serve: \(error)")
        throw ExitCode(1)
    }
}


