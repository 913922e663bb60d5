import Foundation

/// Events every backend writes the same way.
enum JobEvents {
    static func now() -> Int { Int(Date().timeIntervalSince1970) }

    static func make(_ job: String, _ message: String, level: String = "info", type: String = "message", data: String? = nil,
                     step: Int? = nil) -> JobEvent {
        JobEvent(id: IDs.make("ftevent-"), job_id: job, created_at: now(), level: level, message: message, type: type, data: data, step: step)
    }

    /// A job asked to pause or cancel while nobody ran it.
    static func stopped(_ job: inout FineTuningJob, by action: JobAction) {
        if action == .cancel {
            job.status = .cancelled
            job.finished_at = now()
        } else {
            job.status = .paused
        }
    }
}
