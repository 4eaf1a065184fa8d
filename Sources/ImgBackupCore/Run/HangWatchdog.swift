import Foundation
import ImgBackupOS
import Synchronization

/// Asks a transport a question only the remote can answer, with a short
/// deadline of its own: statvfs on an sshfs mount (SFTP statvfs, never
/// cached), or a one-sector read through the NBD bridge (getxattr
/// `user.imgbackup.ping`). A keepalive is no such question: sshd answers
/// those while a frozen sftp-server answers nothing.
struct TransportProbe: Sendable, Equatable {
    enum Kind: Sendable, Equatable { case sshfs, nbd }
    let kind: Kind
    /// Which layer the probe speaks for, in messages.
    let layerName: String
    /// The FUSE mount to ask, and to abort when it hangs.
    let fuseMount: String
    /// Whether bytes reaching the image count as this transport's progress:
    /// they do for the image's transport; a source host's mount shows
    /// progress only as the copy tool's output (write-back of what was
    /// already read keeps the image busy for a while after a source froze).
    let imageWritesAreProgress: Bool

    /// The image's transport.
    init(target: Target, paths: RuntimePaths) {
        kind = target.transport == .nbd ? .nbd : .sshfs
        layerName = target.transport == .nbd ? "the NBD export of \(target.name)" : "sshfs to \(target.remote.host)"
        fuseMount = target.transport == .nbd ? paths.nbdMount(target.name) : paths.remoteMount(target.name)
        imageWritesAreProgress = true
    }

    /// A source host's read-only mount.
    init(source: SourceHost, target: Target, paths: RuntimePaths) {
        kind = .sshfs
        layerName = "the source host \(source.host)"
        fuseMount = paths.sourceMount(target.name, source)
        imageWritesAreProgress = false
    }

    var isSource: Bool { !imageWritesAreProgress }

    func answers(within deadline: Duration) async -> Bool {
        let kind = kind
        let mount = fuseMount
        do {
            return try await withAbandonableDeadline(deadline, operation: "probe \(layerName)") {
                switch kind {
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

/// Watches a running copy step and the transports it works through (the
/// image's; the source hosts' when pulling). Progress is bytes reaching the
/// image's dm-crypt device or new output from the copy tool; each probe runs
/// every few seconds while there is none. A transport that saw no progress
/// and gave no answer for `stall` hangs, reported as that layer.
struct HangWatchdog: Sendable {
    let device: String
    let stall: Duration
    let probes: [TransportProbe]
    /// Bumped by the copy tool's output observer.
    let outputSeen: OutputHeartbeat
    /// What is being watched, for the message: "the backup", "the trim".
    var step = "the backup"

    var interval: Duration { min(.seconds(5), stall / 4) }
    var probeDeadline: Duration { min(.seconds(10), stall / 2) }

    /// Which transport hung, and the error saying so.
    struct Hang: Error {
        let error: ImgBackupError
        let probe: TransportProbe
    }

    /// Returns only by throwing: a `Hang` when a stall is reached, or
    /// cancellation when the copy step finished first.
    func watch() async throws(Hang) -> Never {
        let clock = ContinuousClock()
        var lastBytes = BlockDeviceStats.read(devicePath: device)?.bytesWritten
        var lastOutput = outputSeen.count
        var lastProgress = Array(repeating: clock.now, count: probes.count)
        var lastAnswer = lastProgress
        while true {
            do {
                try await Task.sleep(for: interval)
            } catch {
                throw Hang(error: ImgBackupError(.system, "the watchdog was stopped"), probe: probes[0])
            }
            let bytes = BlockDeviceStats.read(devicePath: device)?.bytesWritten
            let output = outputSeen.count
            let imageMoved = bytes != lastBytes
            let toolSpoke = output != lastOutput
            lastBytes = bytes
            lastOutput = output
            for (index, probe) in probes.enumerated() {
                if toolSpoke || (imageMoved && probe.imageWritesAreProgress) {
                    // Moving: no hang can be declared this round, so no need
                    // to ask the remote. Every round of a stall window is probed.
                    lastProgress[index] = clock.now
                    continue
                }
                if await probe.answers(within: probeDeadline) { lastAnswer[index] = clock.now }
                let now = clock.now
                if now - lastProgress[index] >= stall && now - lastAnswer[index] >= stall {
                    throw Hang(
                        error: ImgBackupError(
                            .hung,
                            "\(step) hung: \(probe.layerName) did not answer for \(stall.secondsText) and nothing was written; the stack was torn down",
                            hint: probe.isSource
                                ? "check the source host; the image is intact and the next run continues"
                                : "check the remote; earlier backups are untouched, the next run continues"),
                        probe: probe)
                }
            }
        }
    }
}

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
