import ImgBackupOS
import Synchronization

@testable import ImgBackupCore

/// A command runner that records every command and answers as told
/// (success by default): the seam for flows that would run tools.
final class FakeRunner: CommandRunning {
    private let recorded = Mutex<[Command]>([])
    private let answer: @Sendable (Command) -> CommandResult

    init(answer: @escaping @Sendable (Command) -> CommandResult = { FakeRunner.exit($0, 0) }) {
        self.answer = answer
    }

    var commands: [Command] { recorded.withLock { $0 } }

    func run(_ command: Command) async throws -> CommandResult {
        recorded.withLock { $0.append(command) }
        return answer(command)
    }

    static func exit(_ command: Command, _ status: Int32, standardError: String = "") -> CommandResult {
        CommandResult(
            executable: command.executable, termination: .exited(status), standardOutput: "",
            standardError: standardError)
    }
}

/// A transport that answers the watchdog's question as it is told, and
/// counts the questions.
final class FakeProbe: TransportProbing {
    let layerName: String
    let fuseMount = "/nonexistent/fuse-mount"
    let imageWritesAreProgress: Bool
    private let answering: Atomic<Bool>
    private let asked = Atomic<Int>(0)

    init(
        _ layerName: String = "sshfs to backup-host", answers: Bool, isSource: Bool = false,
        remoteSent: (@Sendable () -> UInt64)? = nil
    ) {
        self.layerName = layerName
        imageWritesAreProgress = !isSource
        answering = Atomic(answers)
        self.remoteSent = remoteSent
    }

    func answers(within deadline: Duration) async -> Bool {
        asked.add(1, ordering: .relaxed)
        return answering.load(ordering: .relaxed)
    }

    func setAnswering(_ value: Bool) { answering.store(value, ordering: .relaxed) }
    var questions: Int { asked.load(ordering: .relaxed) }

    /// What the remote sent on its one connection, for a transport whose
    /// every byte is an answer (an S3 store); nil for one where bytes prove
    /// nothing (ssh).
    let remoteSent: (@Sendable () -> UInt64)?

    func bytesTheRemoteSent(within deadline: Duration) async -> [UInt64: UInt64]? {
        remoteSent.map { [7: $0()] }
    }
}

/// Takes any record down by noting it, optionally slowly: what close and an
/// unwinding bring-up do, without a kernel.
struct RecordingTeardown: LayerTeardown {
    let log: EventLog
    var slowDown: Duration = .zero

    func down(_ record: LayerRecord, force: Bool) async throws {
        if slowDown > .zero {
            // Not Task.sleep: the teardown must run to the end even when
            // the task that started it was cancelled, and this proves it.
            let clock = ContinuousClock()
            let end = clock.now.advanced(by: slowDown)
            while clock.now < end { try? await Task.sleep(for: .milliseconds(10)) }
        }
        log.add(
            "down \(record.layerName) \(record.place)\(force ? " (forced)" : "")\(Task.isCancelled ? " (cancelled)" : "")"
        )
    }

    func cutOff(_ records: [LayerRecord]) async {
        log.add("cut off \(records.map(\.place).joined(separator: ", "))")
    }
}
