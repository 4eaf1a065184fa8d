import Foundation
import ImgBackupOS
import Synchronization

/// Watches a running copy step and the transports it works through (the
/// image's; the source hosts' when pulling). Progress is bytes reaching the
/// image's dm-crypt device, new output from the copy tool, or new bytes
/// from a remote whose every byte is an answer (an S3 store); each probe
/// runs every few seconds while there is none. A transport that saw no progress
/// and gave no answer for `stall`, and left two questions in a row
/// unanswered, hangs, reported as that layer. (One is not enough: after a
/// suspend, or a scheduler that overslept the whole window, the first
/// question comes after the window and finds a link still waking up.)
struct HangWatchdog: Sendable {
    /// Bytes written to the image so far (its dm-crypt device's counter).
    let bytesWritten: @Sendable () -> UInt64?
    let stall: Duration
    let probes: [any TransportProbing]
    /// Bumped by the copy tool's output observer.
    let outputSeen: OutputHeartbeat
    /// What is being watched, for the message: "the backup", "the trim".
    var step = "the backup"

    var interval: Duration { min(.seconds(5), stall / 4) }
    var probeDeadline: Duration { min(.seconds(10), stall / 2) }

    /// Which transport hung, and the error saying so.
    struct Hang: Error {
        let error: ImgBackupError
        let probe: any TransportProbing
    }

    /// Returns only by throwing: a `Hang` when a stall is reached, or
    /// cancellation when the copy step finished first.
    func watch() async throws(Hang) -> Never {
        let clock = ContinuousClock()
        var lastBytes = bytesWritten()
        var lastOutput = outputSeen.count
        var lastProgress = Array(repeating: clock.now, count: probes.count)
        var lastAnswer = lastProgress
        var unansweredInARow = Array(repeating: 0, count: probes.count)
        var remoteSent: [[UInt64: UInt64]] = []
        for probe in probes { remoteSent.append(await probe.bytesTheRemoteSent(within: probeDeadline) ?? [:]) }
        while true {
            do {
                try await Task.sleep(for: interval)
            } catch {
                throw Hang(error: ImgBackupError(.system, "the watchdog was stopped"), probe: probes[0])
            }
            let bytes = bytesWritten()
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
                    unansweredInARow[index] = 0
                    continue
                }
                if let sent = await probe.bytesTheRemoteSent(within: probeDeadline) {
                    let before = remoteSent[index]
                    remoteSent[index].merge(sent, uniquingKeysWith: max)
                    if sent.contains(where: { socket, bytes in bytes > before[socket, default: 0] }) {
                        // The remote is answering, just not the ping yet.
                        lastProgress[index] = clock.now
                        unansweredInARow[index] = 0
                        continue
                    }
                }
                if await probe.answers(within: probeDeadline) {
                    lastAnswer[index] = clock.now
                    unansweredInARow[index] = 0
                } else {
                    unansweredInARow[index] += 1
                }
                let now = clock.now
                if now - lastProgress[index] >= stall && now - lastAnswer[index] >= stall
                    && unansweredInARow[index] >= 2
                {
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
