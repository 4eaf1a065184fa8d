import CNBD
import Foundation
import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// A libnbd call failed: the call, libnbd's own message, and its errno.
public struct NBDError: Error, Sendable, CustomStringConvertible {
    public let call: String
    public let message: String
    public let errno: Int32

    static func last(_ call: String) -> NBDError {
        let message = nbd_get_error().map { String(cString: $0) } ?? "unknown error"
        let code = nbd_get_errno()
        return NBDError(call: call, message: message, errno: code == 0 ? EIO : code)
    }

    public var description: String { message }
}

/// Where the export is: a command speaking NBD on stdin/stdout (run through
/// ssh on the remote), or an NBD URI.
public enum NBDEndpoint: Sendable, Equatable {
    case command([String])
    case uri(String)
}

/// Owns one `nbd_handle`. After `connect`, all I/O goes through an
/// ``NBDExport``.
public final class NBDConnection: @unchecked Sendable {
    // Safe to share: libnbd locks the handle inside every call; the
    // capability getters read values fixed at negotiation.
    let handle: OpaquePointer

    public init(name: String) throws(NBDError) {
        guard let handle = nbd_create() else { throw NBDError.last("nbd_create") }
        self.handle = handle
        nbd_set_handle_name(handle, name)
        // Ask for allocation status, so the remote image's allocated bytes
        // can be measured over NBD (du through sshfs lies for sparse files).
        if nbd_add_meta_context(handle, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 {
            throw NBDError.last("nbd_add_meta_context")
        }
    }

    deinit { nbd_close(handle) }

    /// Connects and negotiates. Blocks until the server answers or fails;
    /// callers run it where a deadline can abandon it.
    public func connect(_ endpoint: NBDEndpoint) throws(NBDError) {
        switch endpoint {
        case .uri(let uri):
            if nbd_connect_uri(handle, uri) == -1 { throw NBDError.last("nbd_connect_uri") }
        case .command(let argv):
            var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
            cArguments.append(nil)
            defer { for pointer in cArguments { free(pointer) } }
            let status = cArguments.withUnsafeMutableBufferPointer { nbd_connect_command(handle, $0.baseAddress) }
            if status == -1 { throw NBDError.last("nbd_connect_command") }
        }
    }

    public var size: Int64 { nbd_get_size(handle) }
    public var canTrim: Bool { nbd_can_trim(handle) == 1 }
    public var canZero: Bool { nbd_can_zero(handle) == 1 }
    public var canFlush: Bool { nbd_can_flush(handle) == 1 }
    public var isReadOnly: Bool { nbd_is_read_only(handle) == 1 }
    /// The server promises that connections to it see each other's answered
    /// writes and that a flush on one covers all: requests may be spread.
    public var canMultiConn: Bool { nbd_can_multi_conn(handle) == 1 }
    public var canReportAllocation: Bool { nbd_can_meta_context(handle, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1 }

    /// Asks the server to close cleanly (after pending writes are flushed by the caller).
    public func shutdown() { _ = nbd_shutdown(handle, 0) }
}
