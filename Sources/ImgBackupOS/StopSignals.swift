import CImgBackupShim
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// SIGTERM (`systemctl stop`, a shutdown), SIGINT (Ctrl-C) and SIGHUP (a
/// closed terminal) as events instead of a sudden death: a command that
/// holds a target open stops its work and takes the target down first.
///
/// The C handler only writes the signal's number to a pipe; a thread of its
/// own reads it and calls the handler given to ``install(_:)``, with the
/// signal and how many have come so far. The handler decides: the first
/// cancels the work, later ones are reported while the teardown goes on.
public final class StopSignals: Sendable {
    public static let shared = StopSignals()

    private struct State {
        var first: Int32?
        var count = 0
        var handler: (@Sendable (Int32, Int) -> Void)?
    }
    private let state = Mutex(State())

    public init() {}

    /// The first stop signal received, if any.
    public var received: Int32? { state.withLock { $0.first } }

    /// Catches the stop signals from now on; `handler` runs (on a thread of
    /// its own, never in signal context) for each one that arrives.
    public func install(_ handler: @escaping @Sendable (Int32, Int) -> Void) throws(SystemCallError) {
        handle(handler)
        let readEnd = imgb_catch_stop_signals()
        guard readEnd >= 0 else {
            throw SystemCallError(call: "sigaction", object: "SIGTERM, SIGINT, SIGHUP", errno: -readEnd)
        }
        let reader = Thread { [self] in
            var number: UInt8 = 0
            while true {
                var descriptor = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
                guard poll(&descriptor, 1, -1) >= 0 || errno == EINTR else { return }
                while read(readEnd, &number, 1) == 1 { deliver(Int32(number)) }
            }
        }
        reader.name = "stop signals"
        reader.start()
    }

    /// Sets what a stop signal does, without catching any (tests deliver their own).
    public func handle(_ handler: @escaping @Sendable (Int32, Int) -> Void) {
        state.withLock { $0.handler = handler }
    }

    /// A stop signal arrived (from the pipe; tests call it directly).
    public func deliver(_ signal: Int32) {
        let (count, handler) = state.withLock { state in
            state.first = state.first ?? signal
            state.count += 1
            return (state.count, state.handler)
        }
        handler?(signal, count)
    }

    /// "SIGTERM" for messages and the run record.
    public static func name(of signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }
}

/// Runs `body` in a task that the caller's cancellation does not reach.
///
/// Teardown runs here: a stop signal cancels the work that holds a target
/// open, never the unmounts, the deactivation and the detaches that bring
/// it down (swift-subprocess runs its own teardown uncancelled for the same
/// reason). The caller still waits for it to finish.
public func withUncancelledTask<T: Sendable>(_ body: @escaping @Sendable () async -> T) async -> T {
    await Task.detached(priority: Task.currentPriority) { await body() }.value
}
