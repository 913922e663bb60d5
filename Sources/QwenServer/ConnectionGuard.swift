import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTPTypes

/// Limits on what one connection may hold, with sane defaults for a public listener.
public struct ConnectionLimits: Sendable {
    /// Open connections at most; more are closed as they arrive.
    public var maxConnections = 1024
    /// Seconds a connection may take to send a request's headers, counted from when it
    /// opened or its previous response ended (so also how long an idle keep-alive lasts).
    public var headerTimeout: Double = 30
    /// Seconds from a request's headers to the end of its body.
    public var bodyTimeout: Double = 60
    /// Seconds a response write may wait for a client that does not read.
    public var writeTimeout: Double = 60
    public init() {}
}

/// One per connection, right after the HTTP codec: enforces `ConnectionLimits` (slowloris
/// senders, clients that stop reading, too many sockets) and tells requests in progress
/// when their client has gone (its connection closed or its sending side shut), so work
/// nobody will read is cancelled.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Connections by channel, so a request's context can find its connection's guard.
    final class Registry: @unchecked Sendable {
        private let lock = NIOLock()
        private var guards: [ObjectIdentifier: ConnectionGuard] = [:]

        /// Adds a connection unless `limit` are open already.
        func add(_ g: ConnectionGuard, _ channel: any Channel, limit: Int) -> Bool {
            lock.withLock {
                guard guards.count < limit else { return false }
                guards[ObjectIdentifier(channel)] = g
                return true
            }
        }

        func remove(_ channel: any Channel) { _ = lock.withLock { guards.removeValue(forKey: ObjectIdentifier(channel)) } }

        func onClose(of channel: any Channel, _ action: @escaping @Sendable () -> Void) -> Bool {
            guard let g = lock.withLock({ guards[ObjectIdentifier(channel)] }) else { return true }
            return g.addCloseAction(action)
        }
    }

    static let registry = Registry()

    let limits: ConnectionLimits
    // Event-loop state.
    private var reading = false
    private var phaseSince = NIODeadline.now()
    private var inFlight = 0
    private var pendingWrites = 0
    private var writeStalledSince: NIODeadline?
    private var tick: RepeatedTask?
    private var registered = false
    // Shared with request tasks.
    private let closeLock = NIOLock()
    private var closeActions: [@Sendable () -> Void] = []
    private var gone = false

    init(limits: ConnectionLimits) { self.limits = limits }

    func addCloseAction(_ action: @escaping @Sendable () -> Void) -> Bool {
        let run = closeLock.withLock { () -> Bool in
            if gone { return true }
            closeActions.append(action)
            return false
        }
        if run { action() }
        return !run
    }

    private func clientGone() {
        let actions = closeLock.withLock { () -> [@Sendable () -> Void] in
            gone = true
            defer { closeActions = [] }
            return closeActions
        }
        for a in actions { a() }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard Self.registry.add(self, context.channel, limit: limits.maxConnections) else {
            context.close(promise: nil)
            return
        }
        registered = true
        phaseSince = .now()
        let loop = context.eventLoop
        let ctx = NIOLoopBound(context, eventLoop: loop)
        tick = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [weak self] _ in
            self?.check(ctx.value)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { teardown(context) }

    func channelInactive(context: ChannelHandlerContext) {
        teardown(context)
        context.fireChannelInactive()
    }

    private func teardown(_ context: ChannelHandlerContext) {
        tick?.cancel()
        tick = nil
        if registered { Self.registry.remove(context.channel); registered = false }
        clientGone()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed { clientGone() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            reading = true
            inFlight += 1
            phaseSince = .now()
        case .end:
            reading = false
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let isEnd: Bool
        if case .end = unwrapOutboundIn(data) { isEnd = true } else { isEnd = false }
        let done = promise ?? context.eventLoop.makePromise(of: Void.self)
        if pendingWrites == 0 { writeStalledSince = .now() }
        pendingWrites += 1
        let loopBoundSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
        done.futureResult.whenComplete { _ in
            let me = loopBoundSelf.value
            me.pendingWrites -= 1
            // Progress: the client reads.
            me.writeStalledSince = me.pendingWrites == 0 ? nil : .now()
        }
        if isEnd {
            inFlight = max(0, inFlight - 1)
            if inFlight == 0 && !reading { phaseSince = .now() }
        }
        context.write(data, promise: done)
    }

    private func check(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        func over(_ since: NIODeadline, _ seconds: Double) -> Bool { now - since > .milliseconds(Int64(seconds * 1000)) }
        if reading ? over(phaseSince, limits.bodyTimeout) : (inFlight == 0 && over(phaseSince, limits.headerTimeout)) {
            context.close(promise: nil)
        } else if let s = writeStalledSince, over(s, limits.writeTimeout) {
            context.close(promise: nil)
        }
    }
}
