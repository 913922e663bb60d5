import Foundation
import Hummingbird
import NIOCore
import QwenEngine

/// Stops one batch line's engine work (cancel, shutdown).
final class LineCancel: @unchecked Sendable {
    private let lock = NSLock()
    private var streams: [(Engine.Stream, ClientGone)] = []
    private var cancelled = false

    var isCancelled: Bool { lock.withLock { cancelled } }

    func watch(_ stream: Engine.Stream) -> ClientGone {
        let gone = ClientGone()
        let now: Bool = lock.withLock {
            if cancelled { return true }
            streams.append((stream, gone))
            return false
        }
        if now {
            gone.set()
            stream.cancel()
        }
        return gone
    }

    func cancel() {
        let all: [(Engine.Stream, ClientGone)] = lock.withLock {
            cancelled = true
            defer { streams.removeAll() }
            return streams
        }
        for (s, g) in all {
            g.set()
            s.cancel()
        }
    }
}

/// The lines of one batch in flight, cancelled together.
final class CancelGroup: @unchecked Sendable {
    private let lock = NSLock()
    private var members: [ObjectIdentifier: LineCancel] = [:]
    private var cancelled = false

    func add(_ c: LineCancel) {
        let now: Bool = lock.withLock {
            if cancelled { return true }
            members[ObjectIdentifier(c)] = c
            return false
        }
        if now { c.cancel() }
    }

    func remove(_ c: LineCancel) { lock.withLock { _ = members.removeValue(forKey: ObjectIdentifier(c)) } }

    func cancel() {
        let all: [LineCancel] = lock.withLock {
            cancelled = true
            return Array(members.values)
        }
        for c in all { c.cancel() }
    }
}

/// A batch line's invocation: the batch's caller at batch priority; its end is the batch's cancel.
struct BatchInvocation: Invocation {
    let caller: Caller
    let canceller: LineCancel
    func cancelWhenClientGoes(_ stream: Engine.Stream) -> ClientGone { canceller.watch(stream) }
}

/// Collects a response body in memory (a batch line's answer).
final class BodyCollector: ResponseBodyWriter, @unchecked Sendable {
    var bytes: [UInt8] = []
    func write(_ buffer: ByteBuffer) async throws { bytes += buffer.readableBytesView }
    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
