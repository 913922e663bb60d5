import Foundation
import Hummingbird
import QwenEngine
import NIOCore

/// Who is calling, as the authentication middleware of the matched route decided it.
public struct Caller: Sendable {
    /// Separates prefix-cache entries per API key (0 when no keys are configured), so one
    /// tenant's cached-token counts say nothing about another's prompts.
    public var cacheSalt: UInt64 = 0
    /// May see server-side details (adapter paths): an admin key, or no admin keys configured.
    public var seesServerPaths = true
    /// Who owns what this caller stores (stored responses): a digest of its key, never the
    /// key; "" when no keys are configured (one tenant).
    public var owner = ""
    /// Batch lines run at batch priority (see `EngineRequest.Priority`).
    public var priority: EngineRequest.Priority = .interactive
}

/// The request context of every route: Hummingbird's core storage, the connection the
/// request came on (to stop work when its client goes away) and the caller, set by the
/// route group's authentication middleware once the route has matched.
public struct QwenRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel
    public var caller = Caller()

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// Calls `action` once when the client of this request goes away (its connection
    /// closes or it shuts its sending side); returns false if it is gone already.
    @discardableResult
    public func onClientGone(_ action: @escaping @Sendable () -> Void) -> Bool {
        ConnectionGuard.registry.onClose(of: channel, action)
    }

    /// Cancels `stream` when the client goes away; the flag says whether it did.
    func cancelWhenClientGoes(_ stream: Engine.Stream) -> ClientGone {
        let gone = ClientGone()
        onClientGone {
            gone.set()
            stream.cancel()
        }
        return gone
    }
}

/// Set once a request's client has gone.
final class ClientGone: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

extension QwenRequestContext {
    /// A path parameter, percent-decoded: clients encode the `:` of names such as `ft:…:ckpt-step-N`
    /// (`encodeURIComponent`, many HTTP libraries), and `%3A` must name the same model as `:`.
    func pathParameter(_ name: String) -> String {
        let raw = parameters.get(name) ?? ""
        return raw.removingPercentEncoding ?? raw
    }
}
