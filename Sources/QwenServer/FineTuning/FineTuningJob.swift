import Foundation

/// A fine-tuning job as OpenAI's API returns it (`fine_tuning.job`), with every field of
/// theirs (nil ones as null) and the LoRA settings this server trains with (`lora`, ours).
public struct FineTuningJob: Codable, Sendable, Equatable {
    public struct JobError: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        public var param: String?
        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(code, forKey: .code)
            try c.encode(message, forKey: .message)
            try c.encode(param, forKey: .param)
        }
        enum CodingKeys: String, CodingKey { case code, message, param }
        public init(code: String, message: String, param: String? = nil) {
            self.code = code
            self.message = message
            self.param = param
        }
        public init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            code = try c.decode(String.self, forKey: .code)
            message = try c.decode(String.self, forKey: .message)
            param = try c.decodeIfPresent(String.self, forKey: .param)
        }
    }

    /// Resolved hyperparameters (requests may say "auto"; the job echoes the numbers used).
    public struct Hyperparameters: Codable, Sendable, Equatable {
        public var batch_size: Int
        public var learning_rate_multiplier: Double
        public var n_epochs: Int

        public init(batch_size: Int, learning_rate_multiplier: Double, n_epochs: Int) {
            self.batch_size = batch_size
            self.learning_rate_multiplier = learning_rate_multiplier
            self.n_epochs = n_epochs
        }
    }

    public struct Method: Codable, Sendable, Equatable {
        public struct Supervised: Codable, Sendable, Equatable { public var hyperparameters: Hyperparameters }
        public var type = "supervised"
        public var supervised: Supervised
    }

    /// This server's extension: the LoRA that is trained.
    public struct LoRA: Codable, Sendable, Equatable {
        public var rank: Int
        public var scale: Double
        public var dropout: Double
        public var target_modules: [String]
        public var num_layers: Int
        public var max_seq_length: Int
        public var learning_rate: Double
        public var checkpoint_every: Int

        public init(rank: Int, scale: Double, dropout: Double, target_modules: [String], num_layers: Int, max_seq_length: Int,
                    learning_rate: Double, checkpoint_every: Int) {
            self.rank = rank
            self.scale = scale
            self.dropout = dropout
            self.target_modules = target_modules
            self.num_layers = num_layers
            self.max_seq_length = max_seq_length
            self.learning_rate = learning_rate
            self.checkpoint_every = checkpoint_every
        }
    }

    public var id: String
    public var object = "fine_tuning.job"
    public var created_at: Int
    public var error: JobError?
    public var fine_tuned_model: String?
    public var finished_at: Int?
    public var hyperparameters: Hyperparameters
    public var model: String
    public var organization_id = "org-qwen-serve"
    public var result_files: [String] = []
    public var seed: Int
    public var status: JobStatus
    public var trained_tokens: Int?
    public var training_file: String
    public var validation_file: String?
    public var estimated_finish: Int?
    public var integrations: [String]?
    public var metadata: [String: String]?
    public var method: Method
    public var user_provided_suffix: String?
    public var lora: LoRA
    /// Steps done and in all (ours), for progress.
    public var step: Int = 0
    public var total_steps: Int = 0

    enum CodingKeys: String, CodingKey {
        case id, object, created_at, error, fine_tuned_model, finished_at, hyperparameters, model, organization_id, result_files,
             seed, status, trained_tokens, training_file, validation_file, estimated_finish, integrations, metadata, method,
             user_provided_suffix, lora, step, total_steps
    }

    public init(id: String, created_at: Int, hyperparameters: Hyperparameters, model: String, seed: Int, status: JobStatus,
                training_file: String, validation_file: String?, metadata: [String: String]?, suffix: String?, lora: LoRA) {
        self.id = id
        self.created_at = created_at
        self.hyperparameters = hyperparameters
        self.model = model
        self.seed = seed
        self.status = status
        self.training_file = training_file
        self.validation_file = validation_file
        self.metadata = metadata
        method = Method(supervised: .init(hyperparameters: hyperparameters))
        user_provided_suffix = suffix
        self.lora = lora
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        created_at = try c.decode(Int.self, forKey: .created_at)
        error = try c.decodeIfPresent(JobError.self, forKey: .error)
        fine_tuned_model = try c.decodeIfPresent(String.self, forKey: .fine_tuned_model)
        finished_at = try c.decodeIfPresent(Int.self, forKey: .finished_at)
        hyperparameters = try c.decode(Hyperparameters.self, forKey: .hyperparameters)
        model = try c.decode(String.self, forKey: .model)
        result_files = try c.decode([String].self, forKey: .result_files)
        seed = try c.decode(Int.self, forKey: .seed)
        status = try c.decode(JobStatus.self, forKey: .status)
        trained_tokens = try c.decodeIfPresent(Int.self, forKey: .trained_tokens)
        training_file = try c.decode(String.self, forKey: .training_file)
        validation_file = try c.decodeIfPresent(String.self, forKey: .validation_file)
        estimated_finish = try c.decodeIfPresent(Int.self, forKey: .estimated_finish)
        metadata = try c.decodeIfPresent([String: String].self, forKey: .metadata)
        method = try c.decode(Method.self, forKey: .method)
        user_provided_suffix = try c.decodeIfPresent(String.self, forKey: .user_provided_suffix)
        lora = try c.decode(LoRA.self, forKey: .lora)
        step = try c.decode(Int.self, forKey: .step)
        total_steps = try c.decode(Int.self, forKey: .total_steps)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created_at, forKey: .created_at)
        try c.encode(error, forKey: .error)
        try c.encode(fine_tuned_model, forKey: .fine_tuned_model)
        try c.encode(finished_at, forKey: .finished_at)
        try c.encode(hyperparameters, forKey: .hyperparameters)
        try c.encode(model, forKey: .model)
        try c.encode(organization_id, forKey: .organization_id)
        try c.encode(result_files, forKey: .result_files)
        try c.encode(seed, forKey: .seed)
        try c.encode(status, forKey: .status)
        try c.encode(trained_tokens, forKey: .trained_tokens)
        try c.encode(training_file, forKey: .training_file)
        try c.encode(validation_file, forKey: .validation_file)
        try c.encode(estimated_finish, forKey: .estimated_finish)
        try c.encode(integrations, forKey: .integrations)
        try c.encode(metadata, forKey: .metadata)
        try c.encode(method, forKey: .method)
        try c.encode(user_provided_suffix, forKey: .user_provided_suffix)
        try c.encode(lora, forKey: .lora)
        try c.encode(step, forKey: .step)
        try c.encode(total_steps, forKey: .total_steps)
    }

    public var isFinal: Bool { status.isFinal }
}
