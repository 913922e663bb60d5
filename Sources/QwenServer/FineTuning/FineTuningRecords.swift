import Foundation

/// An uploaded file, as OpenAI's Files API describes it (plus where its bytes are kept).
public struct FileObject: Codable, Sendable, Equatable {
    public var id: String
    public var object = "file"
    public var bytes: Int
    public var created_at: Int
    public var filename: String
    public var purpose: String
    public var status: String
    public var status_details: String?
    /// Examples the file holds once validated, and its longest in tokens (ours).
    public var lines: Int?
    public var max_tokens: Int?

    enum CodingKeys: String, CodingKey { case id, object, bytes, created_at, filename, purpose, status, status_details, lines, max_tokens }

    public init(id: String, bytes: Int, created_at: Int, filename: String, purpose: String, status: String, status_details: String? = nil,
                lines: Int? = nil, max_tokens: Int? = nil) {
        self.id = id
        self.bytes = bytes
        self.created_at = created_at
        self.filename = filename
        self.purpose = purpose
        self.status = status
        self.status_details = status_details
        self.lines = lines
        self.max_tokens = max_tokens
    }
}

/// A job's event (`fine_tuning.job.event`).
public struct JobEvent: Codable, Sendable {
    public var seq: Int64?
    public var id: String
    public var object = "fine_tuning.job.event"
    public var job_id: String
    public var created_at: Int
    public var level: String
    public var message: String
    public var type: String
    /// JSON of the event's data (metrics), or nil.
    public var data: String?
    /// The training step a metrics event reports (ours: a resume drops those past its checkpoint).
    public var step: Int?

    public init(seq: Int64? = nil, id: String, job_id: String, created_at: Int, level: String, message: String, type: String,
                data: String? = nil, step: Int? = nil) {
        self.seq = seq
        self.id = id
        self.job_id = job_id
        self.created_at = created_at
        self.level = level
        self.message = message
        self.type = type
        self.data = data
        self.step = step
    }
}

/// A job's checkpoint (`fine_tuning.job.checkpoint`).
public struct JobCheckpoint: Codable, Sendable {
    public var seq: Int64?
    public var id: String
    public var object = "fine_tuning.job.checkpoint"
    public var fine_tuning_job_id: String
    public var created_at: Int
    public var step_number: Int
    /// JSON of the metrics at that step.
    public var metrics: String
    public var fine_tuned_model_checkpoint: String

    public init(seq: Int64? = nil, id: String, fine_tuning_job_id: String, created_at: Int, step_number: Int, metrics: String,
                fine_tuned_model_checkpoint: String) {
        self.seq = seq
        self.id = id
        self.fine_tuning_job_id = fine_tuning_job_id
        self.created_at = created_at
        self.step_number = step_number
        self.metrics = metrics
        self.fine_tuned_model_checkpoint = fine_tuned_model_checkpoint
    }
}
