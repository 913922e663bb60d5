import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The HTTP server on a listening socket that systemd opened and handed over (socket
/// activation, `LISTEN_FDS`): the same routes and middleware as the ordinary server, but
/// the socket is adopted instead of bound, so connections that arrive while the model
/// loads wait in its backlog and a restart never closes the port.
struct ActivatedServer: Service {
    let fd: CInt
    let responder: RouterResponder<QwenRequestContext>
    let http1: HTTP1Channel.Configuration
    let tls: TLSConfiguration?
    let onRunning: @Sendable (Int) async -> Void
    let logger: Logger

    func run() async throws {
        let responder = self.responder
        let logger = self.logger
        let http = HTTP1Channel(responder: { request, writer, channel in
            let context = QwenRequestContext(source: .init(channel: channel, logger: logger))
            var response: Response
            do { response = try await responder.respond(to: request, context: context) } catch {
                response = Response(status: .internalServerError)
            }
            response.headers[.server] = "qwen-serve"
            try await writer.write(response: response.head, body: response.body)
        }, configuration: http1)
        if let tls { try await serve(try TLSChannel(http, tlsConfiguration: tls)) } else { try await serve(http) }
    }

    private func serve<Child: ServerChildChannel>(_ child: Child) async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let quiescing = ServerQuiescingHelper(group: group)
        let logger = self.logger
        let server = try await ServerBootstrap(group: group)
            .serverChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: ch)) }
            }
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(NIOBSDSocket.Handle(fd)) { ch in child.setup(channel: ch, logger: logger) }
        await onRunning(server.channel.localAddress?.port ?? 0)
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { tasks in
                do {
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            tasks.addTask { await child.handle(value: connection, logger: logger) }
                        }
                    }
                } catch {
                    logger.error("accepting connections failed: \(error)")
                }
            }
        } onGracefulShutdown: {
            // Stop accepting, let idle connections close and busy ones finish their request.
            quiescing.initiateShutdown(promise: nil)
        }
    }
}

extension HTTPServer {
    /// The server as a service on an inherited listening socket (see `ActivatedServer`).
    public func makeActivatedService(fd: CInt, onRunning: @escaping @Sendable (Int) async -> Void) throws -> some Service {
        var logger = Logger(label: "qwen-serve.http")
        logger.logLevel = .warning
        return ActivatedServer(fd: fd, responder: makeRouter().buildResponder(), http1: http1Configuration, tls: try tlsConfiguration(), onRunning: onRunning, logger: logger)
    }
}
