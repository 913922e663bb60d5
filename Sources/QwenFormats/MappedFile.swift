import Foundation

/// A read-only memory map of a whole file. Parsers read through `bytes` with bounds
/// checks of their own; nothing outside [0, count) is ever touched.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let count: Int
    public let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let (fd, size) = try SafeFile.openRegular(path)
        defer { close(fd) }
        count = size
        if count == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1))
            mapped = false
            return
        }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw ModelFileError(path, "cannot map: \(String(cString: strerror(errno)))") }
        base = UnsafeRawPointer(p)
        mapped = true
    }

    private let mapped: Bool

    deinit {
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), count) } else { UnsafeMutableRawPointer(mutating: base).deallocate() }
    }

    /// A view of bytes [offset, offset+length), or an error naming the file when it runs past the end.
    public func slice(_ offset: Int, _ length: Int, what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard offset >= 0, length >= 0, offset <= count, length <= count - offset else {
            throw ModelFileError(path, "\(what()) runs past the end of the file (bytes \(offset)..<\(offset &+ length), file has \(count))")
        }
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }
}
