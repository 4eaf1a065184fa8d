import Foundation
import Synchronization
import Testing

@testable import ImgBackupCore

/// Records what a terminal would have shown.
final class RecordingProgress: ProgressDisplay {
    let lines = Mutex<[String]>([])
    func update(_ line: String) { lines.withLock { $0.append(line) } }
    func finish() { lines.withLock { $0.append("<finished>") } }

    /// Until `count` lines were shown, or `limit` passed.
    func wait(for count: Int, within limit: Duration) async throws {
        let deadline = ContinuousClock.now + limit
        while lines.withLock({ $0.count }) < count && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

struct ProgressWatcherTests {
    @Test func theLineAppearsAtOnceAndCountsBytesFromTheStart() async throws {
        let progress = RecordingProgress()
        let counter = Mutex<UInt64>(5_000_000)  // written before the step began: not counted
        let watcher = ProgressWatcher(progress: progress, label: "making ext4", interval: .milliseconds(20)) {
            counter.withLock { total in
                total += 1_048_576
                return total
            }
        }
        let display = Task { await watcher.show() }
        // Wait for a few updates, not a fixed time: a loaded machine only
        // slows this down. The deadline turns a watcher that stopped into a
        // failure, not a hang.
        try await progress.wait(for: 4, within: .seconds(10))
        display.cancel()
        await display.value
        let lines = progress.lines.withLock { $0 }
        #expect(lines.count >= 4, "\(lines)")
        #expect(lines.allSatisfy { $0.hasPrefix("making ext4: ") && $0.contains(" written, ") && $0.contains("/s, ") })
        #expect(lines.first?.hasPrefix("making ext4: 1 MiB written, ") == true, "\(lines)")
        #expect(lines.dropFirst().first?.hasPrefix("making ext4: 2 MiB written, ") == true, "\(lines)")
    }

    @Test func aStepShorterThanOneIntervalStillShowsItsLine() async throws {
        let progress = RecordingProgress()
        // An hour between updates: only the line shown at once can arrive.
        let watcher = ProgressWatcher(progress: progress, label: "making btrfs", interval: .seconds(3600)) { nil }
        let display = Task { await watcher.show() }
        try await progress.wait(for: 1, within: .seconds(10))
        display.cancel()
        await display.value
        // A device the kernel cannot describe counts as nothing written.
        #expect(progress.lines.withLock { $0 }.count == 1)
        #expect(progress.lines.withLock { $0.first }?.hasPrefix("making btrfs: 0 B written, 0 B/s, 0s") == true)
    }
}
