import CImgBackupShim
import CNBD
import Foundation
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

/// Drives one NBD connection with libnbd's asynchronous API on a thread of
/// its own, so many requests from many FUSE threads are in flight at once
/// and network latency does not serialise I/O.
///
/// Only the loop thread touches the handle: callers queue a request, wake the
/// loop through an eventfd, and wait for their completion.
public final class NBDEventLoop: @unchecked Sendable {
    // Safe: `pending` and `dead` are behind Mutexes; the handle is used only
    // on the loop thread.
    private let connection: NBDConnection
    private let pending = Mutex<[NBDRequest]>([])
    private let dead = Mutex<Bool>(false)
    private let wakeDescriptor: Int32
    private var thread: Thread?

    public init(connection: NBDConnection) throws(SystemCallError) {
        self.connection = connection
        wakeDescriptor = try checkedNegative("eventfd", "nbd loop") { imgb_eventfd() }
    }

    deinit { close(wakeDescriptor) }

    public func start() {
        let thread = Thread { [self] in run() }
        thread.name = "nbd-loop"
        thread.start()
        self.thread = thread
    }

    /// Whether the connection to the server is gone.
    public var isDead: Bool { dead.withLock { $0 } }

    // MARK: Blocking calls for FUSE threads. Each returns 0 or an errno.

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64) -> Int32 {
        perform(NBDRequest(.read(buffer, count, offset))).error
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64) -> Int32 {
        perform(NBDRequest(.write(buffer, count, offset))).error
    }

    public func flush() -> Int32 { perform(NBDRequest(.flush)).error }

    /// Largest trim or zero sent as one request. fstrim hands down ranges of
    /// many megabytes; servers cap what they accept in one request (some
    /// silently do less), so larger ranges go as several requests, all in
    /// flight together.
    public static let maximumRangeRequest: UInt64 = 8 << 20

    public func trim(count: UInt64, offset: UInt64) -> Int32 {
        performSplit(count: count, offset: offset) { .trim(count: $0, offset: $1) }
    }

    public func zero(count: UInt64, offset: UInt64) -> Int32 {
        performSplit(count: count, offset: offset) { .zero(count: $0, offset: $1) }
    }

    private func performSplit(count: UInt64, offset: UInt64, _ kind: (UInt64, UInt64) -> NBDRequest.Kind) -> Int32 {
        var requests: [NBDRequest] = []
        var position = offset
        while position < offset + count {
            let length = min(Self.maximumRangeRequest, offset + count - position)
            requests.append(NBDRequest(kind(length, position)))
            position += length
        }
        submit(requests)
        for request in requests { request.done.wait() }
        return requests.first { $0.error != 0 }?.error ?? 0
    }

    /// Allocated bytes of the whole export, from base:allocation block status.
    public func allocatedBytes(size: UInt64) -> Result<UInt64, SystemCallError> {
        var offset: UInt64 = 0
        var allocated: UInt64 = 0
        while offset < size {
            // The protocol's length field is 32 bits: ask in pieces below 4 GiB.
            let request = perform(NBDRequest(.blockStatus(count: min(size - offset, 1 << 31), offset: offset)))
            if request.error != 0 {
                return .failure(SystemCallError(call: "nbd_block_status", object: "export", errno: request.error))
            }
            guard request.covered > 0 else { break }
            allocated += request.allocated
            offset += request.covered
        }
        return .success(allocated)
    }

    private func perform(_ request: NBDRequest) -> NBDRequest {
        submit([request])
        request.done.wait()
        return request
    }

    /// Queues requests for the loop thread; each is signalled when done.
    private func submit(_ requests: [NBDRequest]) {
        if isDead {
            for request in requests {
                request.error = ENOTCONN
                request.done.signal()
            }
            return
        }
        pending.withLock { $0.append(contentsOf: requests) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    // MARK: The loop

    private func run() {
        let handle = connection.handle
        let fd = nbd_aio_get_fd(handle)
        while true {
            for request in pending.withLock({ queue in defer { queue.removeAll() }; return queue }) {
                issue(request, on: handle)
            }
            if nbd_aio_is_dead(handle) == 1 || nbd_aio_is_closed(handle) == 1 || fd < 0 {
                dead.withLock { $0 = true }
                failPending()
                return
            }
            let direction = nbd_aio_get_direction(handle)
            var events: Int16 = 0
            if direction & UInt32(LIBNBD_AIO_DIRECTION_READ) != 0 { events |= Int16(POLLIN) }
            if direction & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0 { events |= Int16(POLLOUT) }
            var fds = [pollfd(fd: fd, events: events, revents: 0), pollfd(fd: wakeDescriptor, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                dead.withLock { $0 = true }
                failPending()
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

    private func failPending() {
        for request in pending.withLock({ queue in defer { queue.removeAll() }; return queue }) {
            request.error = ENOTCONN
            request.done.signal()
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
                        let length = UInt64(entries[index])
                        request.covered += length
                        if entries[index + 1] & UInt32(LIBNBD_STATE_HOLE) == 0 { request.allocated += length }
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
