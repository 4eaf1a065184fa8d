import CImgBackupShim
import CNBD
import Foundation
import ImgBackupOS
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One NBD command waiting for its reply. Callers block on `done`; the event
/// loop fills in `error` (0 or an errno) and signals.
final class NBDRequest: @unchecked Sendable {
    // Safe: `kind` is immutable; `error` and `allocated` are written by the
    // loop thread before `done.signal()` and read by the caller after `wait()`.
    enum Kind {
        case read(UnsafeMutableRawPointer, Int, UInt64)
        case write(UnsafeRawPointer, Int, UInt64)
        case flush
        case trim(count: UInt64, offset: UInt64)
        case zero(count: UInt64, offset: UInt64)
        case blockStatus(count: UInt64, offset: UInt64)
    }
    let kind: Kind
    var error: Int32 = 0
    /// blockStatus: bytes covered by the reply, and how many of them are allocated.
    var covered: UInt64 = 0
    var allocated: UInt64 = 0
    let done = DispatchSemaphore(value: 0)

    init(_ kind: Kind) { self.kind = kind }
}

/// Drives one NBD connection with libnbd's asynchronous API. Callers (FUSE
/// worker threads) issue their commands on the handle themselves, so a
/// request goes to the socket without a thread hop; a thread of the loop's
/// own waits for replies and runs the completion callbacks, which wake the
/// callers. Many requests from many threads are in flight at once, so network
/// latency does not serialise I/O.
///
/// libnbd locks the handle inside every call, so issuing from several threads
/// while the loop thread reads replies is safe.
final class NBDEventLoop: @unchecked Sendable {
    // Safe: the handle is locked by libnbd; `dead` is a Mutex; `issued` atomic.
    private let connection: NBDConnection
    private let dead = Mutex<Bool>(false)
    private let wakeDescriptor: Int32
    /// Requests issued on this connection, for tests of multi-conn spreading.
    let issued = Atomic<Int>(0)

    init(connection: NBDConnection) throws(SystemCallError) {
        self.connection = connection
        wakeDescriptor = try checkedNegative("eventfd", "nbd loop") { imgb_eventfd() }
    }

    deinit { close(wakeDescriptor) }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "nbd-loop"
        thread.start()
    }

    /// Whether the connection to the server is gone.
    var isDead: Bool { dead.withLock { $0 } }

    /// Issues requests on the caller's thread; each is signalled when done.
    func submit(_ requests: some Sequence<NBDRequest>) {
        let handle = connection.handle
        for request in requests {
            if isDead {
                request.error = ENOTCONN
                request.done.signal()
                continue
            }
            issued.add(1, ordering: .relaxed)
            issue(request, on: handle)
        }
        // libnbd sent what the socket took. If some of it waits for the socket
        // to drain, the loop thread must poll for writability too: wake it so
        // it recomputes what to wait for.
        if nbd_aio_get_direction(handle) & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0 {
            var one: UInt64 = 1
            _ = Glibc.write(wakeDescriptor, &one, 8)
        }
    }

    // MARK: The loop

    private func run() {
        let handle = connection.handle
        let fd = nbd_aio_get_fd(handle)
        while true {
            if nbd_aio_is_dead(handle) == 1 || nbd_aio_is_closed(handle) == 1 || fd < 0 {
                // libnbd has failed every command in flight (ENOTCONN) on the
                // way to this state; new ones are refused in submit.
                dead.withLock { $0 = true }
                return
            }
            let direction = nbd_aio_get_direction(handle)
            var events: Int16 = 0
            if direction & UInt32(LIBNBD_AIO_DIRECTION_READ) != 0 { events |= Int16(POLLIN) }
            if direction & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0 { events |= Int16(POLLOUT) }
            var fds = [
                pollfd(fd: fd, events: events, revents: 0),
                pollfd(fd: wakeDescriptor, events: Int16(POLLIN), revents: 0),
            ]
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                dead.withLock { $0 = true }
                return
            }
            let revents = fds[0].revents
            if revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                _ = nbd_aio_notify_read(handle)
            } else if revents & Int16(POLLOUT) != 0 {
                _ = nbd_aio_notify_write(handle)
            }
            if fds[1].revents & Int16(POLLIN) != 0 {
                var value: UInt64 = 0
                _ = Glibc.read(wakeDescriptor, &value, 8)
            }
        }
    }

    private func issue(_ request: NBDRequest, on handle: OpaquePointer) {
        let context = Unmanaged.passRetained(request).toOpaque()
        let completion = nbd_completion_callback(
            callback: { context, error in
                let request = Unmanaged<NBDRequest>.fromOpaque(context!).takeUnretainedValue()
                if let error, error.pointee != 0 { request.error = error.pointee }
                request.done.signal()
                return 1  // retire the command
            },
            user_data: context,
            free: { context in Unmanaged<NBDRequest>.fromOpaque(context!).release() })
        let cookie: Int64
        switch request.kind {
        case .read(let buffer, let count, let offset):
            cookie = nbd_aio_pread(handle, buffer, count, offset, completion, 0)
        case .write(let buffer, let count, let offset):
            cookie = nbd_aio_pwrite(handle, buffer, count, offset, completion, 0)
        case .flush:
            cookie = nbd_aio_flush(handle, completion, 0)
        case .trim(let count, let offset):
            cookie = nbd_aio_trim(handle, count, offset, completion, 0)
        case .zero(let count, let offset):
            cookie = nbd_aio_zero(handle, count, offset, completion, 0)
        case .blockStatus(let count, let offset):
            let extentContext = Unmanaged.passRetained(request).toOpaque()
            let extents = nbd_extent_callback(
                callback: { context, metaContext, _, entries, count, _ in
                    guard let metaContext, String(cString: metaContext) == LIBNBD_CONTEXT_BASE_ALLOCATION,
                        let entries
                    else { return 0 }
                    let request = Unmanaged<NBDRequest>.fromOpaque(context!).takeUnretainedValue()
                    // Pairs of (length, flags).
                    var index = 0
                    while index + 1 < count {
                        // The server's numbers: 32-bit lengths, a count it chose; saturate, never trap.
                        let length = UInt64(entries[index])
                        request.covered += min(length, .max - request.covered)
                        if entries[index + 1] & UInt32(LIBNBD_STATE_HOLE) == 0 {
                            request.allocated += min(length, .max - request.allocated)
                        }
                        index += 2
                    }
                    return 0
                },
                user_data: extentContext,
                free: { context in Unmanaged<NBDRequest>.fromOpaque(context!).release() })
            cookie = nbd_aio_block_status(handle, count, offset, extents, completion, 0)
        }
        if cookie == -1 {
            // libnbd frees the callbacks' user data itself on failure to issue.
            request.error = nbd_get_errno() == 0 ? EIO : nbd_get_errno()
            request.done.signal()
        }
    }
}
