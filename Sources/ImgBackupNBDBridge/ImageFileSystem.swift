import CFuse3
import Foundation
import ImgBackupCore
import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// Serves an NBD export as a FUSE filesystem holding one file, `image`, so a
/// loop device (with direct I/O) can sit on it: read, write, flush map to NBD
/// read, write, flush; fallocate PUNCH_HOLE to NBD trim and ZERO_RANGE to NBD
/// zero, which is how fstrim's discards reach the remote.
public final class ImageFileSystem: @unchecked Sendable {
    // Safe: every field is fixed at init; NBDExport is thread-safe.
    // What the filesystem looks like from outside: BridgedImage.
    static let fileName = BridgedImage.fileName
    static let allocatedAttribute = BridgedImage.allocatedAttribute
    static let pingAttribute = BridgedImage.pingAttribute
    static let subtype = BridgedImage.subtype

    let export: NBDExport
    let size: UInt64
    let canTrim: Bool
    let canZero: Bool
    let canFlush: Bool
    /// Asked after the ping's read when the export's server answers reads
    /// from a cache of its own (S3: nbdkit's cache filter), so the read alone
    /// would not show that the store behind it answers: 0 or an errno.
    let storePing: (@Sendable () -> Int32)?

    public init(
        export: NBDExport, size: UInt64, canTrim: Bool, canZero: Bool, canFlush: Bool,
        storePing: (@Sendable () -> Int32)? = nil
    ) {
        self.export = export
        self.size = size
        self.canTrim = canTrim
        self.canZero = canZero
        self.canFlush = canFlush
        self.storePing = storePing
    }

    /// Mounts at `mountPoint` and serves until it is unmounted.
    public func serve(mountPoint: String, name: String, threads: UInt32 = 16) throws(SystemCallError) {
        var operations = Self.operations()
        let arguments = [
            "imgbackup-nbd", "-o", "fsname=imgbackup-nbd:\(name),subtype=\(Self.subtype)",
        ]
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        defer { for pointer in cArguments { free(pointer) } }
        let context = Unmanaged.passRetained(self)
        defer { context.release() }
        let fuse = cArguments.withUnsafeMutableBufferPointer { buffer -> OpaquePointer? in
            var args = fuse_args(argc: Int32(arguments.count), argv: buffer.baseAddress, allocated: 0)
            return imgb_fuse_new(&args, &operations, context.toOpaque())
        }
        guard let fuse else { throw SystemCallError(call: "fuse_new", object: mountPoint, errno: EINVAL) }
        defer { fuse_destroy(fuse) }
        guard fuse_mount(fuse, mountPoint) == 0 else {
            throw SystemCallError(call: "fuse_mount", object: mountPoint, errno: EIO)
        }
        defer { fuse_unmount(fuse) }
        _ = imgb_fuse_loop_mt(fuse, threads)
    }

    private static func current() -> ImageFileSystem {
        Unmanaged<ImageFileSystem>.fromOpaque(fuse_get_context()!.pointee.private_data!).takeUnretainedValue()
    }

    private static func isImage(_ path: UnsafePointer<CChar>?) -> Bool {
        guard let path else { return false }
        return strcmp(path, "/" + fileName) == 0
    }

    /// The callbacks. Defined in a function, not at top level: libfuse calls
    /// them from its worker threads, and top-level closures would be
    /// main-actor isolated.
    private static func operations() -> fuse_operations {
        var operations = fuse_operations()
        operations.`init` = { connection, _ in
            // 128 KiB requests (libfuse would negotiate 1 MiB): the kernel then
            // sends a 1 MiB direct write as eight requests at once, and the
            // bridge keeps them all in flight on the NBD connections, which
            // hides network latency (measured: docs/benchmarks.md).
            connection?.pointee.max_write = 128 << 10
            // Let the kernel queue many requests at once (its default is 12).
            connection?.pointee.max_background = 64
            connection?.pointee.congestion_threshold = 48
            // No splice from /dev/fuse: write_buf would then get a pipe and
            // have to read it into memory, one more copy than reading the
            // request into libfuse's buffer directly.
            connection?.pointee.want &= ~UInt32(FUSE_CAP_SPLICE_READ)
            // No FOPEN_DIRECT_IO: the kernel sends such a file's writes one
            // request at a time. The loop device opens the file O_DIRECT, which
            // goes through FUSE's async direct I/O instead: no page cache, and
            // all pieces of a large write in flight together.
            // What init returns becomes the private data: keep ours.
            return fuse_get_context()?.pointee.private_data
        }
        operations.getattr = { path, info, _ in
            guard let path, let info else { return -EINVAL }
            memset(info, 0, MemoryLayout<stat>.size)
            if strcmp(path, "/") == 0 {
                info.pointee.st_mode = S_IFDIR | 0o700
                info.pointee.st_nlink = 2
                return 0
            }
            guard ImageFileSystem.isImage(path) else { return -ENOENT }
            let filesystem = ImageFileSystem.current()
            info.pointee.st_mode = S_IFREG | 0o600
            info.pointee.st_nlink = 1
            info.pointee.st_size = off_t(filesystem.size)
            info.pointee.st_blksize = 4096
            info.pointee.st_blocks = blkcnt_t(filesystem.size / 512)
            return 0
        }
        operations.readdir = { path, buffer, fill, _, _, _ in
            guard let path, strcmp(path, "/") == 0, let fill else { return -ENOENT }
            _ = fill(buffer, ".", nil, 0, fuse_fill_dir_flags(rawValue: 0))
            _ = fill(buffer, "..", nil, 0, fuse_fill_dir_flags(rawValue: 0))
            _ = fill(buffer, ImageFileSystem.fileName, nil, 0, fuse_fill_dir_flags(rawValue: 0))
            return 0
        }
        operations.open = { path, _ in ImageFileSystem.isImage(path) ? 0 : -ENOENT }
        operations.read = { path, buffer, count, offset, _ in
            guard ImageFileSystem.isImage(path), let buffer else { return -ENOENT }
            let filesystem = ImageFileSystem.current()
            guard offset >= 0, UInt64(offset) < filesystem.size else { return 0 }
            let length = Int(min(UInt64(count), filesystem.size - UInt64(offset)))
            let error = filesystem.export.read(into: buffer, count: length, offset: UInt64(offset))
            return error == 0 ? Int32(length) : -error
        }
        // write_buf rather than write: libfuse hands over the request buffer it
        // read from /dev/fuse, and the bytes go from there to the socket. With
        // plain write, the high-level API copies each write into a fresh buffer.
        operations.write_buf = { path, source, offset, _ in
            guard ImageFileSystem.isImage(path), let source else { return -ENOENT }
            let filesystem = ImageFileSystem.current()
            let count = fuse_buf_size(source)
            guard offset >= 0, UInt64(offset) + UInt64(count) <= filesystem.size else { return -ENOSPC }
            let scratch =
                imgb_write_needs_copy(source) != 0
                ? UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096) : nil
            defer { scratch?.deallocate() }
            var size = 0
            guard let bytes = imgb_write_bytes(source, scratch, &size) else { return -EIO }
            let error = filesystem.export.write(from: bytes, count: size, offset: UInt64(offset))
            return error == 0 ? Int32(size) : -error
        }
        operations.flush = { _, _ in
            let filesystem = ImageFileSystem.current()
            return filesystem.canFlush ? -filesystem.export.flush() : 0
        }
        operations.fsync = { _, _, _ in
            let filesystem = ImageFileSystem.current()
            return filesystem.canFlush ? -filesystem.export.flush() : 0
        }
        operations.fallocate = { path, mode, offset, length, _ in
            guard ImageFileSystem.isImage(path) else { return -ENOENT }
            let filesystem = ImageFileSystem.current()
            guard offset >= 0, length >= 0, UInt64(offset) + UInt64(length) <= filesystem.size else { return -EINVAL }
            let punchHole: Int32 = 0x02, zeroRange: Int32 = 0x10, keepSize: Int32 = 0x01
            // Unsupported modes answer EOPNOTSUPP, never ENOSYS: ENOSYS would
            // turn fallocate off for the whole FUSE connection.
            switch mode & ~keepSize {
            case punchHole:
                guard filesystem.canTrim else { return -EOPNOTSUPP }
                let error = filesystem.export.trim(count: UInt64(length), offset: UInt64(offset))
                if error != 0 {
                    // The kernel may drop a failed discard silently: leave a trace in the bridge's log.
                    let line =
                        "imgbackup: nbd trim of \(length) bytes at \(offset) failed: \(String(cString: strerror(error)))\n"
                    FileHandle.standardError.write(Data(line.utf8))
                }
                return -error
            case zeroRange:
                guard filesystem.canZero else { return -EOPNOTSUPP }
                return -filesystem.export.zero(count: UInt64(length), offset: UInt64(offset))
            case 0:
                return 0  // allocation is the server's business
            default:
                return -EOPNOTSUPP
            }
        }
        operations.getxattr = { path, name, value, size in
            guard ImageFileSystem.isImage(path), let name else { return -ENODATA }
            let filesystem = ImageFileSystem.current()
            let answer: String
            if strcmp(name, ImageFileSystem.allocatedAttribute) == 0 {
                switch filesystem.export.allocatedBytes(size: filesystem.size) {
                case .failure(let error): return -error.errno
                case .success(let allocated): answer = String(allocated)
                }
            } else if strcmp(name, ImageFileSystem.pingAttribute) == 0 {
                var sector = [UInt8](repeating: 0, count: 512)
                let error = sector.withUnsafeMutableBytes {
                    filesystem.export.read(into: $0.baseAddress!, count: 512, offset: 0)
                }
                if error != 0 { return -error }
                if let storePing = filesystem.storePing {
                    let error = storePing()
                    if error != 0 { return -error }
                }
                answer = "ok"
            } else {
                return -ENODATA
            }
            let text = Array(answer.utf8)
            if size == 0 { return Int32(text.count) }
            guard size >= text.count, let value else { return -ERANGE }
            text.withUnsafeBytes { _ = memcpy(value, $0.baseAddress!, text.count) }
            return Int32(text.count)
        }
        operations.statfs = { _, info in
            guard let info else { return -EINVAL }
            let filesystem = ImageFileSystem.current()
            memset(info, 0, MemoryLayout<statvfs>.size)
            info.pointee.f_bsize = 4096
            info.pointee.f_frsize = 4096
            info.pointee.f_blocks = fsblkcnt_t(filesystem.size / 4096)
            info.pointee.f_namemax = 255
            return 0
        }
        return operations
    }
}
