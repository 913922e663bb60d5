import QwenModel

extension LoRATrainingPass {
    /// A new LoRA as a training configuration describes it (layers, projections, rank, scale,
    /// dropout, seed) and the pass that trains it on `model`: how `qwen-serve lora` and the
    /// fine-tuning jobs both start a run.
    public static func make(model: QwenModel, config c: TrainingConfig) throws -> LoRATrainingPass {
        let params = try LoRAParameters(config: model.config, numLayers: c.numLayers, projections: c.projections, rank: c.loraRank,
                                        scale: Float(c.loraScale), dropout: Float(c.loraDropout), seed: UInt64(c.seed))
        let p = LoRATrainingPass(model: model, parameters: params, checkpoint: c.gradCheckpoint)
        p.dropoutSeed = UInt64(c.seed)
        return p
    }
}
