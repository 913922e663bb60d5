import ArgumentParser
import QwenRuntime

struct Fetch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a model into the cache and print its path (`default` or a hub repo id).")

    @Argument(help: "default, or a Hugging Face repo id such as Qwen/Qwen3-0.6B")
    var model = "default"

    func run() throws {
        try reportingErrors {
            print(try ModelLocator.resolve(model, log: log))
        }
    }
}
