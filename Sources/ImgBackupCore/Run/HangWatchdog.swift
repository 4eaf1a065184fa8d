import Foundation
import ImgBackupOS
import Synchronization

/// Asks the transport a question only the remote can answer, with a short
/// deadline of its own: statvfs on the sshfs mount (SFTP statvfs, never
/// cached), or a one-sector read through the NBD bridge (getxattr
/// `user.imgbackup.ping`). A keepalive is no such question: sshd answers
/// those while a frozen sftp-server answers nothing.
struct TransportProbe: Sendable {
    let target: Target
    let paths: RuntimePaths

    /// Which layer the probe speaks for, in messages.
    var layerName: String {
        target.transport == .nbd ? "the NBD export of \(target.name)" : "sshfs to \(target.remote.host)"
    }

    /// The FUSE mount to abort when the transport hangs.
    var fuseMount: String {
        target.transport == .nbd ? paths.nbdMount(target.name) : paths.remoteMount(target.name)
    }

    func answers(within deadline: Duration) async -> Bool {
        let transport = target.transport
        let mount = fuseMount
        do {
            return try await withAbandonableDeadline(deadline, operation: "probe \(layerName)") {
                switch transport {
                case .sshfs: return (try? LocalFiles.capacity(mount)) != nil
                case .nbd:
                    return ExtendedAttribute.value(of: "\(mount)/\(ImageFileSystem.fileName)", name: ImageFileSystem.pingAttribute) != nil
                }
            }
        } catch {
            return false
        }
    }
}

/// Watches a running copy step. Progress is bytes reaching the image's
/// dm-crypt device or new output from the copy tool; the transport probe
/// runs every few seconds. No progress and no answer from the transport for
/// `stall`: a hang, reported as which layer stopped answering.
struct HangWatchdog: Sendable {
    let device: String
    let stall: Duration
    let probe: TransportProbe
    /// Bumped by the copy tool's output observer.
    let outputSeen: OutputHeartbeat
    /// What is being watched, for the message: "the backup", "the trim".
    var step = "the backup"

    var interval: Duration { min(.seconds(5), stall / 4) }
    var probeDeadline: Duration { min(.seconds(10), stall / 2) }

    /// Returns only by throwing: `.hung` when the stall is reached, or
    /// cancellation when the copy step finished first.
    func watch() async throws(ImgBackupError) -> Never {
        let clock = ContinuousClock()
        var lastBytes = BlockDeviceStats.read(devicePath: device)?.bytesWritten
        var lastOutput = outputSeen.count
        var lastProgress = clock.now
        var lastAnswer = clock.now
        while true {
            do {
                try await Task.sleep(for: interval)
            } catch {
                throw ImgBackupError(.system, "the watchdog was stopped")
            }
            let bytes = BlockDeviceStats.read(devicePath: device)?.bytesWritten
            let output = outputSeen.count
            if bytes != lastBytes || output != lastOutput {
                lastBytes = bytes
                lastOutput = output
                lastProgress = clock.now
                // Moving: no hang can be declared this round, so no need to
                // ask the remote. Every round of a stall window is probed.
                continue
            }
            if await probe.answers(within: probeDeadline) { lastAnswer = clock.now }
            let now = clock.now
            if now - lastProgress >= stall && now - lastAnswer >= stall {
                throw ImgBackupError(
                    .hung,
                    "\(step) hung: \(probe.layerName) did not answer for \(stall.secondsText) and nothing was written; the stack was torn down",
                    hint: "check the remote; earlier backups are untouched, the next run continues")
            }
        }
    }
}

/// Counts output events of the copy tool, for the watchdog.
final class OutputHeartbeat: Sendable {
    private let counter = Atomic<Int>(0)
    var count: Int { counter.load(ordering: .relaxed) }
    func beat() { counter.add(1, ordering: .relaxed) }
}
