/// A fine-tuning job's status, as OpenAI names them (the raw values are the API's strings).
public enum JobStatus: String, Codable, Sendable, CaseIterable {
    case validating_files, queued, running, paused, succeeded, failed, cancelled

    /// Nothing happens to a job in these states any more.
    public var isFinal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}
