import Foundation
import ImgBackupOS
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One NBD export over one or more connections (multi-conn), with blocking
/// calls for FUSE worker threads. Each call returns 0 or an errno.
///
/// Requests go round-robin over the connections. That is only safe when the
/// server advertises multi-conn: then a flush on any connection covers
/// writes answered on all of them, and a read on one sees writes answered on
/// another. The caller decides (``NBDConnection/canMultiConn``).
public final class NBDExport: @unchecked Sendable {
    // Safe: `loops` is fixed at init; `next` is atomic.
    let loops: [NBDEventLoop]
    private let next = Atomic<Int>(0)

    /// Starts one event loop per connection. `connections` must not be empty.
    public init(connections: [NBDConnection]) throws(SystemCallError) {
        precondition(!connections.isEmpty, "an export needs a connection")
        var loops: [NBDEventLoop] = []
        for connection in connections { loops.append(try NBDEventLoop(connection: connection)) }
        self.loops = loops
        for loop in loops { loop.start() }
    }

    /// How many connections carry requests.
    public var connectionCount: Int { loops.count }

    /// Whether any connection to the server is gone. The bridge then fails
    /// what went to that connection, never hangs on it.
    public var isDead: Bool { loops.contains { $0.isDead } }

    private func nextLoop() -> NBDEventLoop {
        loops.count == 1 ? loops[0] : loops[next.add(1, ordering: .relaxed).oldValue % loops.count]
    }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64) -> Int32 {
        perform(NBDRequest(.read(buffer, count, offset)), on: nextLoop())
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64) -> Int32 {
        perform(NBDRequest(.write(buffer, count, offset)), on: nextLoop())
    }

    /// Flushes every connection: one would do under multi-conn's promise,
    /// but all of them costs one round trip too and does not lean on it.
    public func flush() -> Int32 {
        let requests = loops.map { loop in
            let request = NBDRequest(.flush)
            loop.submit(CollectionOfOne(request))
            return request
        }
        return waitAll(requests)
    }

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
            let request = NBDRequest(kind(length, position))
            nextLoop().submit(CollectionOfOne(request))
            requests.append(request)
            position += length
        }
        return waitAll(requests)
    }

    /// Allocated bytes of the whole export, from base:allocation block status.
    public func allocatedBytes(size: UInt64) -> Result<UInt64, SystemCallError> {
        var offset: UInt64 = 0
        var allocated: UInt64 = 0
        while offset < size {
            // The protocol's length field is 32 bits: ask in pieces below 4 GiB.
            let request = NBDRequest(.blockStatus(count: min(size - offset, 1 << 31), offset: offset))
            let error = perform(request, on: loops[0])
            if error != 0 { return .failure(SystemCallError(call: "nbd_block_status", object: "export", errno: error)) }
            guard
                let step = Self.step(offset: offset, size: size, covered: request.covered, allocated: request.allocated)
            else { break }
            allocated += step.allocated
            offset += step.covered
        }
        return .success(allocated)
    }

    /// How far one block-status answer moves the scan: the server says how
    /// much it covered and how much of that is allocated, and may say more
    /// than was asked (or than exists). Clamped to what is left of the
    /// export, so no answer can overflow or run the count past `size`;
    /// nil when it covered nothing (the scan stops).
    static func step(offset: UInt64, size: UInt64, covered: UInt64, allocated: UInt64) -> (
        covered: UInt64, allocated: UInt64
    )? {
        guard covered > 0, offset < size else { return nil }
        let covered = min(covered, size - offset)
        return (covered, min(allocated, covered))
    }

    private func perform(_ request: NBDRequest, on loop: NBDEventLoop) -> Int32 {
        loop.submit(CollectionOfOne(request))
        request.done.wait()
        return request.error
    }

    private func waitAll(_ requests: [NBDRequest]) -> Int32 {
        for request in requests { request.done.wait() }
        return requests.first { $0.error != 0 }?.error ?? 0
    }
}
