import Foundation
import QwenChat

/// The settings that can change while serving (SIGHUP reloads them): the API keys, the
/// admin keys and the default chat-template arguments.
public final class LiveSettings: @unchecked Sendable {
    private let lock = NSLock()
    private var keyDigests: [[UInt8]] = []
    private var adminDigests: [[UInt8]] = []
    private var templateArgs: [(String, JSONValue)] = []

    public init(apiKeys: [String] = [], adminKeys: [String] = [], chatTemplateArgs: [(String, JSONValue)] = []) {
        update(apiKeys: apiKeys, adminKeys: adminKeys, chatTemplateArgs: chatTemplateArgs)
    }

    public func update(apiKeys: [String], adminKeys: [String] = [], chatTemplateArgs: [(String, JSONValue)]) {
        let digests = apiKeys.map(apiKeyDigest), admin = adminKeys.map(apiKeyDigest)
        lock.lock()
        keyDigests = digests
        adminDigests = admin
        templateArgs = chatTemplateArgs
        lock.unlock()
    }

    var apiKeyDigests: [[UInt8]] {
        lock.lock()
        defer { lock.unlock() }
        return keyDigests
    }

    var adminKeyDigests: [[UInt8]] {
        lock.lock()
        defer { lock.unlock() }
        return adminDigests
    }

    var chatTemplateArgs: [(String, JSONValue)] {
        lock.lock()
        defer { lock.unlock() }
        return templateArgs
    }
}
