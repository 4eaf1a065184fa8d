import Foundation
import ImgBackupOS
import Synchronization

/// Runs a step that works through the transport (the copy step of `run`,
/// fstrim in `trim`) with the hang watchdog beside it. On a hang it aborts
/// the transport's FUSE connection, so everything waiting on the remote gets
/// an error at once instead of waiting forever; cancels the step (a command's
/// process group gets TERM, then KILL); gives it the teardown deadline to let
/// go of the image; and reports the hang. The caller then closes with force.
struct HangGuard: Sendable {
    let target: Target
    let environment: OperationEnvironment
    /// Output of the step's tools, as progress.
    var heartbeat = OutputHeartbeat()
    /// What is guarded, for the message: "the backup", "the trim".
    var step = "the backup"
    /// Source hosts the step reads from over their own mounts (a pull).
    var sources: [SourceHost] = []

    enum Outcome<T: Sendable>: Sendable {
        case finished(Result<T, ImgBackupError>)
        /// The transport that stopped answering, and the error saying so.
        case hung(ImgBackupError, any TransportProbing)
    }

    var probes: [any TransportProbing] {
        environment.transportProbes(target, sources, environment.paths)
    }

    func run<T: Sendable>(_ body: @escaping @Sendable () async throws(ImgBackupError) -> T) async -> Outcome<T> {
        let device = "/dev/mapper/\(target.mappingName)"
        let watchdog = HangWatchdog(
            bytesWritten: { BlockDeviceStats.read(devicePath: device)?.bytesWritten }, stall: Deadlines(target).stall,
            probes: probes, outputSeen: heartbeat, step: step)
        let work = Task { () async throws -> T in try await body() }
        // Not a task group: a group would wait for a step stuck on the dead
        // transport before returning. Not structured either, so a stop
        // signal's cancellation is handed on by hand: the step's commands
        // get their teardown ladder, and the step ends with an error.
        let outcome = await withTaskCancellationHandler {
            await race(work, watchdog)
        } onCancel: {
            work.cancel()
        }
        if case .hung(_, let probe) = outcome { await recover(work, probe: probe) }
        return outcome
    }

    private func race<T: Sendable>(_ work: Task<T, any Error>, _ watchdog: HangWatchdog) async -> Outcome<T> {
        await withCheckedContinuation { (continuation: CheckedContinuation<Outcome<T>, Never>) in
            let first = FirstResult(continuation)
            let dog = Task {
                do {
                    try await watchdog.watch()
                } catch let hang as HangWatchdog.Hang {
                    guard hang.error.code == .hung else { return }
                    first.resume(returning: .hung(hang.error, hang.probe))
                } catch {}
            }
            Task {
                let result = await work.result
                dog.cancel()
                first.resume(
                    returning: .finished(
                        result.mapError { ImgBackupError.wrapping($0, .copyFailed, failedTo: "run the copy step") }))
            }
        }
    }

    private func recover<T>(_ work: Task<T, any Error>, probe: any TransportProbing) async {
        environment.logger.notice("\(probe.layerName) stopped answering: aborting its FUSE connection and tearing down")
        do {
            try FUSEConnection.abort(mountPoint: probe.fuseMount)
        } catch {
            environment.logger.error("could not abort the FUSE connection of \(probe.fuseMount): \(error)")
        }
        work.cancel()
        let finished = Latch()
        Task {
            _ = await work.result
            finished.set()
        }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: Deadlines(target).teardownStep)
        while clock.now < deadline {
            if finished.isSet { return }
            try? await Task.sleep(for: .milliseconds(200))
        }
        environment.logger.error(
            "the step did not stop within \(Deadlines(target).teardownStep.secondsText): tearing down around it")
    }
}
