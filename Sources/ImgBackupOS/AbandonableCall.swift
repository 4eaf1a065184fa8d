import Foundation
import Synchronization

/// A wait ran past its deadline. For a blocking call the thread it ran on may
/// still be stuck in the kernel (an unmount on dead storage sits in D state);
/// imgbackup itself carries on.
public struct DeadlineExceeded: Error, Sendable, CustomStringConvertible {
    /// What was being waited for, e.g. `"umount /mnt/imgbackup/offsite"`.
    public let operation: String
    public let deadline: Duration
    public init(operation: String, deadline: Duration) {
        self.operation = operation
        self.deadline = deadline
    }
    public var description: String { "\(operation) did not finish within \(deadline.secondsText)" }
}

extension Duration {
    /// "30s", "1.5s", "250ms": for messages.
    public var secondsText: String {
        let millis = components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
        if millis % 1000 == 0 { return "\(millis / 1000)s" }
        if millis < 1000 { return "\(millis)ms" }
        return String(format: "%.1fs", Double(millis) / 1000)
    }
}

/// Resolves a continuation exactly once, whichever of several racing tasks
/// (work or deadline; a step or its hang watchdog) comes first.
public final class FirstResult<T: Sendable, Failure: Error>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, Failure>?>
    public init(_ continuation: CheckedContinuation<T, Failure>) {
        self.continuation = Mutex(continuation)
    }
    public func resume(with result: Result<T, Failure>) {
        let pending = continuation.withLock { slot in
            defer { slot = nil }
            return slot
        }
        pending?.resume(with: result)
    }
}

extension FirstResult where Failure == Never {
    public func resume(returning value: T) { resume(with: .success(value)) }
}

/// Deadlines fire from a queue of their own, not from a task: the
/// cooperative pool has one thread per core, and code blocked on a dead
/// remote (or a busy machine) could hold every one of them, and with them
/// the timer that was to end the wait. A private serial queue always gets a
/// thread.
final class DeadlineTimer: @unchecked Sendable {
    // Safe to share: DispatchWorkItem's cancel is thread-safe, and the item
    // is never changed after init.
    private static let queue = DispatchQueue(label: "imgbackup.deadlines")
    private let item: DispatchWorkItem

    /// Calls `fire` after `delay` unless cancelled first.
    @discardableResult
    static func after(_ delay: Duration, _ fire: @escaping @Sendable () -> Void) -> DeadlineTimer {
        DeadlineTimer(delay, fire)
    }

    private init(_ delay: Duration, _ fire: @escaping @Sendable () -> Void) {
        item = DispatchWorkItem(block: fire)
        let nanoseconds = delay.components.seconds * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000
        Self.queue.asyncAfter(deadline: .now() + .nanoseconds(Int(clamping: nanoseconds)), execute: item)
    }

    func cancel() { item.cancel() }
}

/// Runs `body` on a thread of its own and waits at most `deadline` for it.
///
/// A task timeout cannot interrupt a blocking syscall: an `umount`, `fsync` or
/// dm-crypt deactivate on storage that stopped answering blocks forever, in
/// uninterruptible sleep. Such calls run here, where the deadline abandons the
/// thread instead of waiting on it, so a frozen remote never freezes imgbackup.
public func withAbandonableDeadline<T: Sendable>(
    _ deadline: Duration,
    operation: String,
    _ body: @escaping @Sendable () throws -> T
) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let first = FirstResult(continuation)
        let timer = DeadlineTimer.after(deadline) {
            first.resume(with: .failure(DeadlineExceeded(operation: operation, deadline: deadline)))
        }
        let worker = Thread {
            let result = Result { try body() }
            timer.cancel()
            first.resume(with: result)
        }
        worker.name = String(operation.prefix(15))
        worker.start()
    }
}

/// Runs `body`, a call that blocks for as long as it serves (a FUSE session
/// loop), on a thread of its own, and waits for it without holding a thread
/// of the cooperative pool. That pool has one thread per core: on a
/// one-CPU machine a loop run from a task took its only thread, and every
/// task the served requests started (the S3 bridge's ping of the store)
/// waited for a thread forever, and the request with it.
public func onThreadOfItsOwn<T: Sendable, Failure: Error>(
    named name: String, _ body: @escaping @Sendable () throws(Failure) -> T
) async throws(Failure) -> T {
    let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, Failure>, Never>) in
        let worker = Thread {
            do throws(Failure) {
                continuation.resume(returning: .success(try body()))
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        worker.name = String(name.prefix(15))
        worker.start()
    }
    return try result.get()
}

/// Runs async `body` with a deadline. When the deadline passes, or the
/// calling task is cancelled, `body` is cancelled (for a child process that
/// starts its teardown ladder) and given `cancellationGrace` to wind down;
/// past that it is abandoned. `body` runs in a task of its own so that even a
/// body that ignores cancellation never holds the caller past the grace.
public func withDeadline<T: Sendable>(
    _ deadline: Duration,
    operation: String,
    cancellationGrace: Duration = .seconds(10),
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let work = Task { try await body() }
    let pending = Mutex<FirstResult<T, any Error>?>(nil)
    do {
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let first = FirstResult(continuation)
                pending.withLock { $0 = first }
                let timer = DeadlineTimer.after(deadline) {
                    first.resume(with: .failure(DeadlineExceeded(operation: operation, deadline: deadline)))
                }
                Task.detached {
                    let result = await work.result
                    timer.cancel()
                    first.resume(with: result)
                }
                // Cancelled before the handler could see the continuation.
                if Task.isCancelled { first.resume(with: .failure(CancellationError())) }
            }
        } onCancel: {
            pending.withLock { $0 }?.resume(with: .failure(CancellationError()))
        }
    } catch let error where error is DeadlineExceeded || error is CancellationError {
        work.cancel()
        // Wait for the teardown, but never longer than the grace.
        _ = try? await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let first = FirstResult(continuation)
            DeadlineTimer.after(cancellationGrace) { first.resume(with: .success(())) }
            Task.detached {
                _ = await work.result
                first.resume(with: .success(()))
            }
        }
        throw error
    }
}
