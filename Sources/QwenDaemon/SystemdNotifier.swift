import CSystemd
import Foundation

/// sd_notify(3) through libsystemd: READY, STATUS, WATCHDOG, STOPPING, RELOADING.
/// Without systemd (no NOTIFY_SOCKET) every call is a no-op.
public final class SystemdNotifier: @unchecked Sendable {
    public let watchdogInterval: Double?
    private let lock = NSLock()
    private var lastWatchdog = Date.distantPast
    private var lastStatus = ""

    public init() {
        var usec: UInt64 = 0
        // sd_watchdog_enabled: > 0 when WATCHDOG_USEC is set for this process.
        if sd_watchdog_enabled(0, &usec) > 0, usec > 0 {
            watchdogInterval = Double(usec) / 1e6
        } else {
            watchdogInterval = nil
        }
    }

    public var underSystemd: Bool { ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] != nil }

    @discardableResult
    public func notify(_ state: String) -> Bool { sd_notify(0, state) > 0 }

    public func ready(status: String) { notify("READY=1\nSTATUS=\(status)") }
    public func stopping(status: String) { notify("STOPPING=1\nSTATUS=\(status)") }
    public func reloading() { notify("RELOADING=1") }
    public func reloaded(status: String) { notify("READY=1\nSTATUS=\(status)") }

    /// Sends STATUS only when it changed.
    public func status(_ s: String) {
        lock.lock()
        let changed = s != lastStatus
        lastStatus = s
        lock.unlock()
        if changed { notify("STATUS=\(s)") }
    }

    /// Pets the watchdog at half its interval. Call it from the loop whose hang should
    /// get the service restarted (the engine loop).
    public func watchdog() {
        guard let interval = watchdogInterval else { return }
        let now = Date()
        lock.lock()
        let due = now.timeIntervalSince(lastWatchdog) >= interval / 2
        if due { lastWatchdog = now }
        lock.unlock()
        if due { notify("WATCHDOG=1") }
    }
}
