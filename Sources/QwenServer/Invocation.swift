import Foundation
import QwenEngine

/// Who runs a request and what ends it early: an HTTP request (its caller; its client going
/// away) or a line of a batch (the batch's caller at batch priority; the batch's cancel). The
/// endpoints take either, so a batch line runs exactly the code an interactive request does.
protocol Invocation {
    var caller: Caller { get }
    /// Cancels `stream` when the requester goes away; the flag says whether it did.
    func cancelWhenClientGoes(_ stream: Engine.Stream) -> ClientGone
}

extension QwenRequestContext: Invocation {}
