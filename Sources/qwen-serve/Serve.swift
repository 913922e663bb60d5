import ArgumentParser
import Foundation
import Hummingbird
import QwenChat
import QwenEngine
import QwenKernels
import QwenRuntime
import QwenServer
import ServiceLifecycle

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the OpenAI-compatible HTTP server.")

    @Option(help: "A model directory, a .gguf file, `default`, or a hub repo id.")
    var model = "default"
    @Option(help: "Address to listen on (loopback unless told otherwise).")
    var host = "127.0.0.1"
    @Option(help: "Port to listen on (0 picks a free one).")
    var port = 8080
    @Option(name: .customLong("served-model-name"), help: "The model name clients use (default: from the model file).")
    var servedModelName: String?
    @Option(name: .customLong("kv-cache-gb"), help: "Memory for the KV cache, in GiB.")
    var kvCacheGB: Double = 2
    @Option(name: .customLong("max-running"), help: "Sequences batched together at most.")
    var maxRunning = 64
    @Option(name: .customLong("max-waiting"), help: "Requests that may wait for a place; more get HTTP 429.")
    var maxWaiting = 256
    @Option(name: .customLong("step-tokens"), help: "Tokens per engine step (decode tokens plus prompt chunks).")
    var stepTokens = 512
    @Option(name: .customLong("chat-template-args"), help: #"Default chat template arguments as JSON, e.g. '{"enable_thinking":false}'."#)
    var chatTemplateArgs: String?
    @Option(name: .customLong("max-body-mb"), help: "Largest request body, in MiB.")
    var maxBodyMB = 8
    @Option(name: .customLong("shutdown-grace"), help: "Seconds in-flight requests get to finish on SIGTERM.")
    var shutdownGrace: Double = 30

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0…65535") }
        guard kvCacheGB > 0 else { throw ValidationError("--kv-cache-gb must be positive") }
        guard maxRunning >= 1, maxWaiting >= 0, stepTokens >= 1, maxBodyMB >= 1 else {
            throw ValidationError("--max-running, --step-tokens and --max-body-mb must be at least 1")
        }
        if let a = chatTemplateArgs, (try? JSONValue.parse(a))?.object == nil {
            throw ValidationError("--chat-template-args must be a JSON object")
        }
    }

    func run() async throws {
        do {
            let info = try BLAS.load()
            log("OpenBLAS kernels: \(info.coreName)\(info.chosenCoreType.map { " (OPENBLAS_CORETYPE=\($0) chosen for this CPU)" } ?? ""), \(info.threads) threads")
            let path = try ModelLocator.resolve(model, log: log)
            let loaded = try LoadedModel.load(path: path, name: servedModelName)
            var ec = Engine.Config()
            ec.maxRunning = maxRunning
            ec.maxWaiting = maxWaiting
            ec.stepTokens = stepTokens
            ec.kvBlocks = Engine.blocks(forBytes: Int(kvCacheGB * Double(1 << 30)), config: loaded.model.config)
            let engine = Engine(model: loaded.model, tokenizer: loaded.tokenizer, config: ec)
            let args = try chatTemplateArgs.map { try JSONValue.parse($0).object ?? [] } ?? []
            let service = try ModelService(name: loaded.name, engine: engine, tokenizer: loaded.tokenizer, chatTemplateArgs: args)
            engine.start()
            var hc = HTTPServer.Config()
            hc.host = host
            hc.port = port
            hc.maxBodyBytes = maxBodyMB << 20
            let name = loaded.name, listenHost = host, positions = ec.kvBlocks * ec.blockSize
            let app = HTTPServer(service: service, config: hc).makeApplication { port in
                log("serving \(name) on http://\(listenHost):\(port) (KV cache: \(positions) positions)")
            }
            // On SIGTERM/SIGINT the HTTP server stops accepting and waits for its handlers;
            // the engine lets running requests finish for the grace period, then cancels the
            // rest, which ends their responses.
            let grace = shutdownGrace
            try await withGracefulShutdownHandler {
                try await app.runService()
            } onGracefulShutdown: {
                log("stopping: in-flight requests get \(grace) s to finish")
                Thread.detachNewThread { engine.shutdown(grace: grace) }
            }
            engine.shutdown(grace: 0)
            log("stopped")
        } catch {
            log("qwen-serve: \(error)")
            throw ExitCode(1)
        }
    }
}
