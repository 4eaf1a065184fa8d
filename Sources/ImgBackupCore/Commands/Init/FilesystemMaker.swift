import ImgBackupOS
import Logging

/// Makes the image's filesystem: ext4 with no reserved blocks, or btrfs.
///
/// Both write only their metadata's skeleton, so init sends about the same
/// at 1 GiB and at 1 TiB (16 MiB for ext4, 5 MiB for btrfs at 1 TiB):
///
/// - ext4's inode tables and journal are left as they are (`lazy_*_init=1`),
///   and `FilesystemLayer` mounts with `noinit_itable`, so the kernel never
///   zeroes them in the background either (zeroing them wrote 19.5 GiB for a
///   1 TiB image). Through dm-crypt a never-written block reads as random
///   bytes, not zeros; ext4 never reads them as data. Each group descriptor
///   says how many of its inodes were ever used (`bg_itable_unused`, guarded
///   by the descriptor's checksum), and the kernel and e2fsck skip the rest.
///   Every inode and journal block carries a crc32c (`metadata_csum`, asked
///   for explicitly, and the journal's checksum v3 that comes with it), so
///   garbage never passes for an inode or for a transaction to replay: jbd2
///   stops at the first block whose magic, sequence or checksum is wrong.
///   docs/architecture.md ("Lazy filesystem init") has the whole argument.
/// - btrfs writes its trees and superblocks only, and never zeroes.
///
/// While mkfs runs, the bytes written to the dm device are the progress line
/// on a terminal, and the hang watchdog guards it as it guards a backup.
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
                [
                    "-F", "-q", "-m", "0", "-O", "metadata_csum",
                    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", "-L", label, device,
                ],
                timeout: .seconds(7 * 24 * 3600))
        case .btrfs:
            return Command("mkfs.btrfs", ["-f", "-q", "-K", "-L", label, device], timeout: .seconds(7 * 24 * 3600))
        }
    }

    func run() async throws(ImgBackupError) {
        let command = self.command
        let runner = environment.runner
        let watcher = ProgressWatcher(
            device: device, progress: environment.progress, label: "making \(target.filesystem.rawValue)")
        let display = Task { await watcher.show() }
        // mkfs writes every block group through the transport: a remote that
        // freezes meanwhile is a hang like in `run` (exit 3, torn down).
        let outcome = await HangGuard(target: target, environment: environment, step: "making the filesystem").run {
            () async throws(ImgBackupError) -> CommandResult in
            do {
                return try await runner.run(command)
            } catch {
                throw ImgBackupError.wrapping(error, .system, failedTo: "run \(command.executable)")
            }
        }
        // The watcher's last line must be written before it is cleared.
        display.cancel()
        await display.value
        environment.progress?.finish()
        switch outcome {
        case .finished(.success(let result)) where result.succeeded:
            return
        case .finished(.success(let result)):
            throw ImgBackupError(
                .system,
                "failed to make the \(target.filesystem.rawValue) filesystem on \(device): \(result.failureSummary)")
        case .finished(.failure(let error)), .hung(let error, _):
            throw error
        }
    }
}

/// Shows the bytes written to a block device as progress. Hangs are the
/// HangGuard's to declare.
struct ProgressWatcher: Sendable {
    let progress: (any ProgressDisplay)?
    let label: String
    let interval: Duration
    /// Bytes written to the device so far; nil when the kernel cannot say.
    let bytesWritten: @Sendable () -> UInt64?

    init(device: String, progress: (any ProgressDisplay)?, label: String) {
        self.init(progress: progress, label: label) { BlockDeviceStats.read(devicePath: device)?.bytesWritten }
    }

    init(
        progress: (any ProgressDisplay)?, label: String, interval: Duration = .seconds(1),
        bytesWritten: @escaping @Sendable () -> UInt64?
    ) {
        self.progress = progress
        self.label = label
        self.interval = interval
        self.bytesWritten = bytesWritten
    }

    func show() async {
        guard let progress else { return }
        let clock = ContinuousClock()
        let start = clock.now
        let initial = bytesWritten() ?? 0
        // The line appears at once: a step that ends within the first
        // interval still says what it was doing.
        repeat {
            let written = bytesWritten() ?? initial
            let elapsed = clock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let bytes = written >= initial ? written - initial : 0
            let rate = seconds > 0 ? UInt64(Double(bytes) / seconds) : 0
            progress.update("\(label): \(ByteSize.format(bytes)) written, \(ByteSize.format(rate))/s, \(Int(seconds))s")
        } while (try? await Task.sleep(for: interval)) != nil
    }
}
