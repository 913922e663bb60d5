import Foundation
import GRDB

/// The SQLite databases under the state directory (fine-tuning, responses, batches): created
/// when missing, in WAL mode, and waiting up to 10 s for another writer's lock.
enum StateDatabase {
    static func open(directory: String, file: String) throws -> DatabaseQueue {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var config = Configuration()
        config.busyMode = .timeout(10)
        let db = try DatabaseQueue(path: (directory as NSString).appendingPathComponent(file), configuration: config)
        try db.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode = WAL") }
        return db
    }
}
