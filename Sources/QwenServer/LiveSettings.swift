import Foundation
import QwenChat

/// The settings that can change while serving (SIGHUP reloads them): the API keys and the
/// default chat-template arguments.
public final class LiveSettings: @unchecked Sendable {
    private let lock = NSLock()
    private var keyDigests: [[UInt8]] = []
    private var templateArgs: [(String, JSONValue)] = []

    public init(apiKeys: [String] = [], chatTemplateArgs: [(String, JSONValue)] = []) {
        update(apiKeys: apiKeys, chatTemplateArgs: chatTemplateArgs)
    }

    public func update(apiKeys: [String], chatTemplateArgs: [(String, JSONValue)]) {
        let digests = apiKeys.map(apiKeyDigest)
        lock.lock()
        keyDigests = digests
        templateArgs = chatTemplateArgs
        lock.unlock()
    }

    var apiKeyDigests: [[UInt8]] {
        lock.lock()
        defer { lock.unlock() }
        return keyDigests
    }

    var chatTemplateArgs: [(String, JSONValue)] {
        lock.lock()
        defer { lock.unlock() }
        return templateArgs
    }
}
