import Foundation
import ImgBackupOS
import Logging

/// Progress for the journal. On a terminal the progress line is redrawn in
/// place; under a timer nobody sees that, so a long run, init or trim says
/// once a minute (``OperationEnvironment/journalProgressInterval``) how far
/// it is: bytes written to (or discarded from) the image, the rate over the
/// last interval, and the copy tool's own latest progress line.
final class JournalProgress: Sendable {
    private let task: Task<Void, Never>?

    private init(task: Task<Void, Never>?) { self.task = task }

    /// Starts reporting `what` ("run of 'offsite'") on the dm-crypt device
    /// `device`; nothing when a terminal shows progress already.
    static func start(
        _ what: String, device: String, heartbeat: OutputHeartbeat? = nil, environment: OperationEnvironment
    ) -> JournalProgress {
        guard environment.progress == nil, let interval = environment.journalProgressInterval else {
            return JournalProgress(task: nil)
        }
        let logger = environment.logger
        let task = Task {
            let clock = ContinuousClock()
            let start = clock.now
            let first = BlockDeviceStats.read(devicePath: device)
            var previous = first
            while true {
                do { try await Task.sleep(for: interval) } catch { return }
                let now = BlockDeviceStats.read(devicePath: device)
                let line = Self.line(
                    what, elapsed: clock.now - start, interval: interval, first: first, previous: previous, now: now,
                    tool: heartbeat?.lastProgress)
                logger.notice("\(line)")
                previous = now
            }
        }
        return JournalProgress(task: task)
    }

    func stop() { task?.cancel() }

    /// "run of 'offsite': 4 min in, 1.2 GiB written to the image (20.5 MiB/s over the last 60s); rsync: 512 MiB 45% 18 MiB/s"
    static func line(
        _ what: String, elapsed: Duration, interval: Duration, first: BlockDeviceStats?, previous: BlockDeviceStats?,
        now: BlockDeviceStats?, tool: String?
    ) -> String {
        var line = "\(what): \(Self.minutes(elapsed)) in"
        if let first, let previous, let now {
            let seconds = max(Double(interval.components.seconds), 1)
            let written = now.bytesWritten &- first.bytesWritten
            let rate = Double(now.bytesWritten &- previous.bytesWritten) / seconds
            line +=
                ", \(ByteSize.format(written)) written to the image (\(ByteSize.format(UInt64(rate)))/s over the last \(interval.secondsText))"
            let discarded = now.bytesDiscarded &- first.bytesDiscarded
            if discarded > 0 { line += ", \(ByteSize.format(discarded)) discarded" }
        }
        if let tool { line += "; \(tool)" }
        return line
    }

    private static func minutes(_ duration: Duration) -> String {
        let seconds = duration.components.seconds
        return seconds < 120 ? "\(seconds) s" : "\(seconds / 60) min"
    }
}
