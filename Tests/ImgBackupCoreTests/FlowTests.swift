import Foundation
import ImgBackupOS
import Logging
import Synchronization
import Testing

@testable import ImgBackupCore

#if canImport(Glibc)
    import Glibc
#endif

/// The orchestration around the layers, on the host: the hang watchdog's
/// decision, bringing a target up and taking it down through the seams
/// (a fake command runner, a recording teardown, probes that answer as
/// told). The real side of each seam runs in the real-kernel suite.
@Suite struct FlowTests {
    static let target = Target(
        name: "t", remote: RemoteLocation(user: "backup", host: "backup-host", directory: "/srv"), image: "t.img",
        key: .file("/k"), mountPoint: "/var/tmp/imgbackup-flow-mnt")

    func environment(_ root: String, runner: FakeRunner = FakeRunner(), log: EventLog, slowDown: Duration = .zero)
        -> OperationEnvironment
    {
        var environment = OperationEnvironment(
            paths: RuntimePaths(runtimeDirectory: root + "/run", stateDirectory: root + "/state"), runner: runner,
            logger: Logger(label: "test"))
        environment.stopSignals = StopSignals()
        environment.layerTeardown = { _ in RecordingTeardown(log: log, slowDown: slowDown) }
        return environment
    }

    // MARK: the stall decision

    func watchdog(
        _ probes: [any TransportProbing], bytes: @escaping @Sendable () -> UInt64? = { 0 },
        output: OutputHeartbeat = OutputHeartbeat()
    )
        -> HangWatchdog
    {
        HangWatchdog(
            bytesWritten: bytes, stall: .milliseconds(400), probes: probes, outputSeen: output, step: "the backup")
    }

    /// Races the watchdog against `window`: the hang it declared, or nil.
    func hang(of watchdog: HangWatchdog, within window: Duration) async -> HangWatchdog.Hang? {
        let watching = Task { () -> HangWatchdog.Hang? in
            do {
                try await watchdog.watch()
            } catch let hang as HangWatchdog.Hang {
                return hang.error.code == .hung ? hang : nil
            }
        }
        let stopper = Task {
            try? await Task.sleep(for: window)
            watching.cancel()
        }
        defer { stopper.cancel() }
        return (try? await watching.value) ?? nil
    }

    @Test func aTransportThatNeitherMovesNorAnswersHangsAndIsNamed() async {
        let probe = FakeProbe(answers: false)
        let hang = await hang(of: watchdog([probe]), within: .seconds(5))
        #expect(hang?.probe.layerName == "sshfs to backup-host")
        #expect(hang?.error.code == .hung)
        #expect(hang?.error.message.contains("the backup hung: sshfs to backup-host did not answer for") == true)
        #expect(probe.questions >= 2, "a hang takes two unanswered questions in a row")
    }

    @Test func aTransportThatAnswersNeverHangsEvenWhenNothingMoves() async {
        let probe = FakeProbe(answers: true)
        #expect(await hang(of: watchdog([probe]), within: .milliseconds(1600)) == nil)
        #expect(probe.questions >= 4)
    }

    @Test func bytesReachingTheImageAreTheImageTransportsProgressWithoutAsking() async {
        let counter = Atomic<UInt64>(0)
        let probe = FakeProbe(answers: false)
        let moving = watchdog([probe], bytes: { counter.add(4096, ordering: .relaxed).newValue })
        #expect(await hang(of: moving, within: .milliseconds(1600)) == nil)
        #expect(probe.questions == 0, "a moving transport is never asked")
    }

    /// Write-back of what a frozen source host already gave keeps the image
    /// busy: that is no sign the source still answers.
    @Test func bytesReachingTheImageAreNoProgressOfASourceHost() async {
        let counter = Atomic<UInt64>(0)
        let source = FakeProbe("the source host web1", answers: false, isSource: true)
        let moving = watchdog(
            [FakeProbe(answers: true), source], bytes: { counter.add(4096, ordering: .relaxed).newValue })
        let hang = await hang(of: moving, within: .seconds(5))
        #expect(hang?.probe.layerName == "the source host web1")
        #expect(hang?.probe.isSource == true)
    }

    /// nbdkit's cache filter holds the ping while a flush sends what it
    /// gathered to the store: longer than the stall over a slow uplink.
    /// The store's answers to the flush's PUTs show it works.
    @Test func bytesFromAStoreThatOnlyAnswersAreProgressWhileThePingWaits() async {
        let received = Atomic<UInt64>(0)
        let store = FakeProbe(
            "the S3 store at http://store", answers: false,
            remoteSent: { received.add(200, ordering: .relaxed).newValue })
        #expect(await hang(of: watchdog([store]), within: .milliseconds(1600)) == nil)
        #expect(store.questions == 0, "a store that answers is not asked")
    }

    @Test func aStoreThatStoppedSendingHangs() async {
        let store = FakeProbe("the S3 store at http://store", answers: false, remoteSent: { 4096 })
        let hang = await hang(of: watchdog([store]), within: .seconds(5))
        #expect(hang?.probe.layerName == "the S3 store at http://store")
        #expect(store.questions >= 2)
    }

    @Test func theCopyToolsOutputIsProgressOfEveryTransport() async {
        let output = OutputHeartbeat()
        let talking = Task {
            while !Task.isCancelled {
                output.beat()
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        defer { talking.cancel() }
        let probe = FakeProbe(answers: false)
        #expect(await hang(of: watchdog([probe], output: output), within: .milliseconds(1600)) == nil)
    }

    // MARK: a hang mid-copy

    @Test func aHangMidCopyStopsTheStepAndTheCloseIsForced() async throws {
        let root = makeScratchDirectory("flow")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = EventLog()
        var environment = environment(root, log: log)
        environment.transportProbes = { _, _, _ in [FakeProbe(answers: false)] }
        var target = Self.target
        target.timeouts.stall = .milliseconds(400)
        target.timeouts.teardown = .seconds(2)
        let builder = StackBuilder(target: target, environment: environment, operation: .run)
        for name in ["remote", "loop", "crypt"] {
            try await builder.push(RecordedLayer(record: .crypt(name: name)))
        }
        let stepSawCancellation = Latch()
        let outcome = await HangGuard(target: target, environment: environment).run {
            () async throws(ImgBackupError) -> Int in
            // The copy step, stuck on the remote until it is stopped.
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(20)) }
            stepSawCancellation.set()
            throw ImgBackupError(.copyFailed, "rsync was stopped")
        }
        guard case .hung(let error, let probe) = outcome else {
            Issue.record("expected a hang, got \(outcome)")
            return
        }
        #expect(error.code == .hung && probe.layerName == "sshfs to backup-host")
        #expect(stepSawCancellation.isSet, "the stuck step was not stopped before the teardown")
        try await builder.unwind(force: true)
        #expect(
            log.all == ["down dm-crypt crypt (forced)", "down dm-crypt loop (forced)", "down dm-crypt remote (forced)"])
        #expect(try environment.stateStore.load(target: "t") == nil)
    }

    // MARK: bringing up: step k of n fails

    /// The first step of a real bring-up (the sshfs mount) fails through
    /// the fake runner: the error says what and how to check it, the
    /// half-up layer is taken down, and the state record is gone.
    @Test func aFailedMountEndsTheBringUpAndUnwindsWhatWasRecorded() async throws {
        let root = makeScratchDirectory("flow")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = EventLog()
        let runner = FakeRunner { FakeRunner.exit($0, 1, standardError: "read: Connection reset by peer") }
        let environment = environment(root, runner: runner, log: log)
        let builder = StackBuilder(target: Self.target, environment: environment, operation: .open)
        let error = await #expect(throws: ImgBackupError.self) {
            try await builder.unwindingOnFailure { () async throws(ImgBackupError) in _ = try await builder.pushRemote()
            }
        }
        #expect(error?.code == .remote)
        #expect(error?.message.hasPrefix("failed to mount backup@backup-host:/srv over sshfs: ") == true)
        #expect(error?.message.contains("Connection reset by peer") == true)
        #expect(runner.commands.map(\.executable) == ["sshfs"])
        #expect(log.all == ["down sshfs \(root)/run/t/remote"])
        #expect(try environment.stateStore.load(target: "t") == nil)
    }

    @Test(arguments: 0..<4)
    func stepKOfFourFailsAndEverythingUpToItComesDown(failing: Int) async throws {
        let root = makeScratchDirectory("flow")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = EventLog()
        let environment = environment(root, log: log)
        let builder = StackBuilder(target: Self.target, environment: environment, operation: .run)
        let names = ["remote", "loop", "crypt", "mount"]
        let error = await #expect(throws: ImgBackupError.self) {
            try await builder.unwindingOnFailure { () async throws(ImgBackupError) in
                for (index, name) in names.enumerated() {
                    try await builder.push(RecordedLayer(record: .crypt(name: name), fails: index == failing))
                }
            }
        }
        #expect(
            error?.message.hasPrefix("failed to bring up the dm-crypt mapping /dev/mapper/\(names[failing])") == true)
        #expect(log.all == names.prefix(failing + 1).reversed().map { "down dm-crypt \($0)" })
        #expect(try environment.stateStore.load(target: "t") == nil)
    }

    /// A stop signal between two layers ends the bring-up (exit 9), and
    /// what is up comes down.
    @Test func aStopSignalBetweenLayersEndsTheBringUp() async throws {
        let root = makeScratchDirectory("flow")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = EventLog()
        let environment = environment(root, log: log)
        let builder = StackBuilder(target: Self.target, environment: environment, operation: .run)
        let error = await #expect(throws: ImgBackupError.self) {
            try await builder.unwindingOnFailure { () async throws(ImgBackupError) in
                try await builder.push(RecordedLayer(record: .crypt(name: "remote")))
                environment.stopSignals.deliver(SIGTERM)
                try await builder.push(RecordedLayer(record: .crypt(name: "loop")))
            }
        }
        #expect(error?.code == .interrupted)
        #expect(log.all == ["down dm-crypt remote"])
    }

    // MARK: closing: a signal mid-teardown

    /// A second Ctrl-C (the task cancelled) while close takes the layers
    /// down: every layer still comes down, none of them sees the
    /// cancellation, and the state record is gone.
    @Test func aSignalMidTeardownDoesNotCutTheCloseShort() async throws {
        let root = makeScratchDirectory("flow")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = EventLog()
        let environment = environment(root, log: log, slowDown: .milliseconds(150))
        let layers: [LayerRecord] = [
            .sshfs(source: "backup@backup-host:/srv", mountPoint: root + "/run/t/remote"),
            .loop(backingFile: root + "/run/t/remote/t.img", device: "/dev/loop7"),
            .crypt(name: "imgbackup-t"),
            .filesystem(device: "/dev/mapper/imgbackup-t", mountPoint: Self.target.mountPoint),
        ]
        try environment.stateStore.save(
            StateRecord(target: "t", operation: .open, pid: getpid(), startedAt: Date(), layers: layers))
        let close = Task { try await CloseOperation(target: Self.target, environment: environment).run() }
        try await Task.sleep(for: .milliseconds(200))
        close.cancel()
        let outcome = try await close.value
        #expect(outcome == .closed(layers: 4))
        #expect(
            log.all == [
                "down filesystem \(Self.target.mountPoint)", "down dm-crypt imgbackup-t",
                "down loop \(root)/run/t/remote/t.img", "down sshfs \(root)/run/t/remote",
            ])
        #expect(try environment.stateStore.load(target: "t") == nil)
    }
}

/// A layer whose record is given, that comes up (or refuses to) at once.
struct RecordedLayer: Layer {
    let record: LayerRecord
    var fails = false

    var intent: LayerRecord { record }

    func up() async throws -> LayerRecord {
        if fails { throw TestFailure(description: "it refused") }
        return record
    }
}
