import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Opening files named by configuration or requests without trusting them: only regular
/// files (a FIFO would block the reader forever, a device such as /dev/zero never ends),
/// never the kernel's pseudo-files (/proc, /sys: sizes that lie), opened without blocking,
/// checked after opening (a path swapped in between is caught) and bounded in size.
public enum SafeFile {
    /// An open descriptor of a regular file and its size; the caller closes it.
    public static func openRegular(_ path: String, maxBytes: Int? = nil) throws -> (fd: Int32, size: Int) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw ModelFileError(path, "cannot be read: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw ModelFileError(path, "is not a regular file") }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw ModelFileError(path, "cannot be opened: \(String(cString: strerror(errno)))") }
        do {
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw ModelFileError(path, "is not a regular file") }
            // Kernel pseudo-files report sizes that are not their contents.
            if let real = realpath(path, nil) {
                let r = String(cString: real)
                free(real)
                if ["/proc", "/sys", "/dev"].contains(where: { r == $0 || r.hasPrefix($0 + "/") }) {
                    throw ModelFileError(path, "is a kernel pseudo-file (\(r)), not a model, adapter or config file")
                }
            }
            let size = Int(st.st_size)
            if let maxBytes, size > maxBytes {
                throw ModelFileError(path, "is \(size) bytes, more than the \(maxBytes) bytes allowed for this kind of file")
            }
            // Reads from here on may block (ordinary disk reads): clear O_NONBLOCK.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            return (fd, size)
        } catch {
            close(fd)
            throw error
        }
    }

    /// The whole of a small regular file (a config, a key list), at most `maxBytes`.
    public static func read(_ path: String, maxBytes: Int = 1 << 20) throws -> Data {
        let (fd, size) = try openRegular(path, maxBytes: maxBytes)
        defer { close(fd) }
        var data = Data(count: size)
        var got = 0
        try data.withUnsafeMutableBytes { (buf: UnsafeMutableRawBufferPointer) in
            while got < size {
                let n = Foundation.read(fd, buf.baseAddress! + got, size - got)
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw ModelFileError(path, "read failed: \(String(cString: strerror(errno)))") }
                if n == 0 { break }  // shrank while reading
                got += n
            }
        }
        return data.prefix(got)
    }
}
