import ImgBackupOS
import Logging

/// Makes the image's filesystem: ext4 with no reserved blocks and lazy init
/// off (so no background writes happen later over the network), or btrfs.
///
/// mkfs is the slow step of `init` (every inode table crosses the network).
/// While it runs, a watcher samples the bytes written to the dm device: that
/// is the progress line on a terminal, and no progress for `timeouts.stall`
/// is a hang.
struct FilesystemMaker {
    let target: Target
    let device: String
    let environment: OperationEnvironment

    var command: Command {
        let label = String("imgbackup-\(target.name)".prefix(16))
        switch target.filesystem {
        case .ext4:
            return Command(
                "mkfs.ext4",
                ["-F", "-q", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", "-L", label, device],
                timeout: .seconds(7 * 24 * 3600))
        case .btrfs:
            return Command("mkfs.btrfs", ["-f", "-q", "-K", "-L", label, device], timeout: .seconds(7 * 24 * 3600))
        }
    }

    func run() async throws(ImgBackupError) {
        let command = self.command
        let runner = environment.runner
        let watcher = ProgressWatcher(
            device: device, stall: target.timeouts.stall, progress: environment.progress,
            label: "making \(target.filesystem.rawValue)")
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    let result = try await runner.run(command)
                    guard result.succeeded else {
                        throw ImgBackupError(.system, "failed to make the \(target.filesystem.rawValue) filesystem: \(result.failureSummary)")
                    }
                }
                group.addTask { try await watcher.watch() }
                try await group.next()
                group.cancelAll()
            }
        } catch {
            environment.progress?.finish()
            throw ImgBackupError.wrapping(error, .system, failedTo: "make the filesystem on \(device)")
        }
        environment.progress?.finish()
    }
}

/// Watches the bytes written to a block device: shows them as progress, and
/// declares a hang when they stop moving for `stall`.
struct ProgressWatcher: Sendable {
    let device: String
    let stall: Duration
    let progress: (any ProgressDisplay)?
    let label: String
    var interval: Duration = .seconds(1)

    func watch() async throws {
        let clock = ContinuousClock()
        let start = clock.now
        let initial = BlockDeviceStats.read(devicePath: device)?.bytesWritten ?? 0
        var last = initial
        var lastChange = start
        while true {
            try await Task.sleep(for: interval)
            let now = clock.now
            let written = BlockDeviceStats.read(devicePath: device)?.bytesWritten ?? last
            if written != last {
                last = written
                lastChange = now
            } else if now - lastChange >= stall {
                throw ImgBackupError(
                    .hung,
                    "\(label) stopped: nothing was written to \(device) for \(stall.secondsText); the remote looks hung")
            }
            let elapsed = now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let bytes = last - initial
            let rate = seconds > 0 ? UInt64(Double(bytes) / seconds) : 0
            progress?.update(
                "\(label): \(ByteSize.format(bytes)) written, \(ByteSize.format(rate))/s, \(Int(seconds))s")
        }
    }
}
