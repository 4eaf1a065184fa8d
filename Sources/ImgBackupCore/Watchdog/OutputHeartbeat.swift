import Synchronization

/// Counts output events of the copy tool, for the watchdog.
final class OutputHeartbeat: Sendable {
    private let counter = Atomic<Int>(0)
    private let progress = Mutex<String?>(nil)
    var count: Int { counter.load(ordering: .relaxed) }
    func beat() { counter.add(1, ordering: .relaxed) }
    /// The tool's latest progress line (rsync's, borg's), for the journal.
    var lastProgress: String? { progress.withLock { $0 } }
    func note(progress line: String) { progress.withLock { $0 = line } }
}
