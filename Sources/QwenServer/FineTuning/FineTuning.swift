import Foundation
import QwenEngine
import QwenModel
import QwenTokenizer

/// Fine-tuning on this replica: the store, the engine-side manager, the runner that claims jobs
/// and the models kept in step with the store.
public struct FineTuning: Sendable {
    public let manager: JobManager
    public let runner: JobRunner
    public let models: FineTunedModels
    /// This replica's own directory (uploads in flight, run directories, caches).
    public let stateDirectory: String
    public var store: any FineTuningStore { manager.store }

    /// Wires the parts to the engine and starts them: every fine-tuned model the store holds is
    /// served before this returns (the problems are returned to log).
    public static func start(store: any FineTuningStore, stateDirectory: String, runner settings: JobRunner.Settings, engine: Engine,
                             tokenizer: Tokenizer, baseName: String, modelPath: String, adapters: AdapterRegistry) async throws -> (FineTuning, [String]) {
        for sub in ["uploads", "jobs", "cache"] {
            try FileManager.default.createDirectory(atPath: stateDirectory + "/" + sub, withIntermediateDirectories: true)
        }
        let manager = JobManager(store: store, baseName: baseName)
        let models = FineTunedModels(store: store, adapters: adapters, cacheDirectory: stateDirectory + "/cache/adapters")
        let problems = await models.refresh()
        await models.start()
        let runner = JobRunner(manager: manager, settings: settings, model: engine.model, tokenizer: tokenizer, modelPath: modelPath, models: models)
        engine.interleaved = manager
        runner.start()
        return (FineTuning(manager: manager, runner: runner, models: models, stateDirectory: stateDirectory), problems)
    }
}
