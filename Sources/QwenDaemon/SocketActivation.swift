import CSystemd
import Foundation

/// systemd socket activation (sd_listen_fds(3)): the listening socket a `.socket` unit
/// opened for this process, if any. The LISTEN_* variables are cleared so that child
/// processes do not inherit them.
public enum SocketActivation {
    public struct ActivationError: Error, CustomStringConvertible {
        public let description: String
    }

    /// nil without socket activation; the descriptor of the one listening stream socket otherwise.
    public static func listeningSocket() throws -> CInt? {
        let n = sd_listen_fds(1)
        guard n != 0 else { return nil }
        guard n > 0 else { throw ActivationError(description: "socket activation: sd_listen_fds failed (\(String(cString: strerror(-n))))") }
        guard n == 1 else {
            throw ActivationError(description: "socket activation: systemd passed \(n) sockets; the .socket unit must have exactly one ListenStream")
        }
        let fd = SD_LISTEN_FDS_START
        guard sd_is_socket(fd, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1) > 0 else {
            throw ActivationError(description: "socket activation: descriptor \(fd) is not a listening stream socket (use ListenStream=)")
        }
        return fd
    }
}
