import ImgBackupOS
import Logging
import Synchronization
import Testing

@testable import ImgBackupCore

/// Records every event, in order, so tests can check what the stack did.
final class EventLog: Sendable {
    let events = Mutex<[String]>([])
    func add(_ event: String) { events.withLock { $0.append(event) } }
    var all: [String] { events.withLock { $0 } }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
}

/// A layer that comes up (or fails to) and notes it.
struct FakeLayer: Layer {
    let name: String
    let failsUp: Bool
    let log: EventLog
    let journal: MemoryJournal

    var intent: LayerRecord { .crypt(name: name) }

    func up() async throws -> LayerRecord {
        // The intent must be on record before the layer starts coming up.
        log.add("up \(name) (recorded: \(journal.latest.map(\.description).joined(separator: ", ")))")
        if failsUp { throw TestFailure(description: "\(name) refused to come up") }
        return intent
    }
}

struct FakeTeardown: LayerTeardown {
    let failing: Set<String>
    /// Layers whose unforced `down` runs out of its deadline, as on a frozen remote.
    var stuck: Set<String> = []
    let log: EventLog

    func down(_ record: LayerRecord, force: Bool) async throws {
        guard case .crypt(let name) = record else { return }
        log.add("down \(name)\(force ? " (forced)" : "")")
        if failing.contains(name) { throw TestFailure(description: "\(name) is busy") }
        if stuck.contains(name) && !force {
            throw ImgBackupError.wrapping(
                DeadlineExceeded(operation: "deactivate \(name)", deadline: .seconds(10)), .system,
                failedTo: "close \(name)")
        }
    }

    func cutOff(_ records: [LayerRecord]) async {
        log.add("cut off \(records.map(\.place).joined(separator: ", "))")
    }
}

final class MemoryJournal: StateJournal {
    private let saved = Mutex<[LayerRecord]?>(nil)
    func save(_ layers: [LayerRecord]) throws { saved.withLock { $0 = layers } }
    func clear() throws { saved.withLock { $0 = nil } }
    var latest: [LayerRecord] { saved.withLock { $0 ?? [] } }
    var isCleared: Bool { saved.withLock { $0 == nil } }
}

@Suite struct LayerStackTests {
    let names = ["sshfs", "loop", "crypt", "mount"]

    func makeStack(failingDown: Set<String> = [], stuck: Set<String> = []) -> (LayerStack, EventLog, MemoryJournal) {
        let log = EventLog()
        let journal = MemoryJournal()
        let stack = LayerStack(
            journal: journal, teardown: FakeTeardown(failing: failingDown, stuck: stuck, log: log),
            logger: Logger(label: "test"))
        return (stack, log, journal)
    }

    @Test func pushRecordsTheIntentBeforeUp() async throws {
        let (stack, log, journal) = makeStack()
        try await stack.push(FakeLayer(name: "sshfs", failsUp: false, log: log, journal: journal))
        try await stack.push(FakeLayer(name: "loop", failsUp: false, log: log, journal: journal))
        #expect(
            log.all == [
                "up sshfs (recorded: dm-crypt mapping /dev/mapper/sshfs)",
                "up loop (recorded: dm-crypt mapping /dev/mapper/sshfs, dm-crypt mapping /dev/mapper/loop)",
            ])
        #expect(journal.latest == [.crypt(name: "sshfs"), .crypt(name: "loop")])
    }

    /// Step k of n fails to come up: every layer up to and including k is taken
    /// down, newest first (k may be half up), and the state record is cleared.
    @Test(arguments: 0..<4)
    func failureAtStepKUnwindsEverythingBelowInReverse(failingStep: Int) async throws {
        let (stack, log, journal) = makeStack()
        var thrown: (any Error)?
        for (index, name) in names.enumerated() {
            do {
                try await stack.push(FakeLayer(name: name, failsUp: index == failingStep, log: log, journal: journal))
            } catch {
                thrown = error
                break
            }
        }
        #expect((thrown as? TestFailure)?.description == "\(names[failingStep]) refused to come up")
        let report = await stack.unwind()
        #expect(report.succeeded)
        let downs = log.all.filter { $0.hasPrefix("down") }
        #expect(downs == names.prefix(failingStep + 1).reversed().map { "down \($0)" })
        #expect(!log.all.contains("up \(names.last!)") || failingStep == names.count - 1)
        #expect(journal.isCleared)
        #expect(await stack.depth == 0)
    }

    /// A layer that found its place taken made nothing: its intent is
    /// dropped, so the unwind never takes down the other session's layer.
    @Test func aLayerThatMadeNothingIsNotTakenDown() async throws {
        let (stack, log, journal) = makeStack()
        try await stack.push(FakeLayer(name: "loop", failsUp: false, log: log, journal: journal))
        struct TakenPlace: Layer {
            var intent: LayerRecord { .crypt(name: "taken") }
            func up() async throws -> LayerRecord {
                throw LayerNotMade(ImgBackupError(.alreadyOpen, "taken exists"))
            }
        }
        let error = await #expect(throws: ImgBackupError.self) { try await stack.push(TakenPlace()) }
        #expect(error?.code == .alreadyOpen)
        #expect(journal.latest == [.crypt(name: "loop")])
        _ = await stack.unwind()
        #expect(log.all.filter { $0.hasPrefix("down") } == ["down loop"])
    }

    /// A layer that will not come down does not stop the unwinding; the first
    /// error is kept and the failed records stay on the state record.
    @Test func teardownCarriesOnPastFailuresAndKeepsTheFirst() async throws {
        let (stack, log, journal) = makeStack(failingDown: ["crypt", "loop"])
        for name in names {
            try await stack.push(FakeLayer(name: name, failsUp: false, log: log, journal: journal))
        }
        let report = await stack.unwind()
        #expect(log.all.filter { $0.hasPrefix("down") } == ["down mount", "down crypt", "down loop", "down sshfs"])
        #expect(report.failures.count == 2)
        #expect(report.firstFailure?.layer == .crypt(name: "crypt"))
        #expect(report.firstFailure?.error.message.contains("crypt is busy") == true)
        #expect(report.remaining == [.crypt(name: "loop"), .crypt(name: "crypt")])
        #expect(journal.latest == [.crypt(name: "loop"), .crypt(name: "crypt")])
    }

    /// A step that runs out of its deadline means the remote stopped
    /// answering: the transports (everything still on the stack, the stuck
    /// layer included) are cut off, the stuck layer is taken down again
    /// forced, and so is every layer after it; the report says so.
    @Test func aStuckStepCutsTheTransportOffAndForcesTheRest() async throws {
        let (stack, log, journal) = makeStack(stuck: ["crypt"])
        for name in names {
            try await stack.push(FakeLayer(name: name, failsUp: false, log: log, journal: journal))
        }
        let report = await stack.unwind()
        #expect(
            log.all.filter { !$0.hasPrefix("up") } == [
                "down mount", "down crypt", "cut off sshfs, loop, crypt", "down crypt (forced)", "down loop (forced)",
                "down sshfs (forced)",
            ])
        #expect(report.succeeded)
        #expect(report.stuck?.operation == "deactivate crypt")
        #expect(journal.isCleared)
    }

    @Test func partialUnwindKeepsTheLowerLayers() async throws {
        let (stack, log, journal) = makeStack()
        for name in names {
            try await stack.push(FakeLayer(name: name, failsUp: false, log: log, journal: journal))
        }
        let report = await stack.unwind(keeping: 1)
        #expect(report.succeeded)
        #expect(report.remaining == [.crypt(name: "sshfs")])
        #expect(journal.latest == [.crypt(name: "sshfs")])
        await stack.unwind()
        #expect(journal.isCleared)
    }

    @Test func unwindingAnEmptyStackIsASuccess() async {
        let (stack, log, journal) = makeStack()
        let report = await stack.unwind()
        #expect(report.succeeded)
        #expect(log.all.isEmpty)
        #expect(journal.isCleared)
    }
}

@Suite struct LayerCatalogTests {
    static func target() throws -> Target {
        var target = Target(
            name: "offsite", remote: try RemoteLocation.parse("backup@host:/srv/laptop").get(), image: "laptop.img",
            key: .file("/k"), mountPoint: "/mnt/offsite")
        target.copy = Target.Copy(method: .rsync)
        target.copy?.sources = ["ssh://alice@web1/var/www"]
        return target
    }

    /// Every kind a target's stack has on either transport is in the one
    /// list close, status and doctor use, plus each source host's mount.
    @Test func theListOfPossibleLayersCoversEveryKindBothTransportsPutUp() throws {
        let paths = RuntimePaths(runtimeDirectory: "/run/x", stateDirectory: "/var/lib/x")
        let layers = try Self.target().possibleLayers(paths)
        #expect(Set(layers.map(\.layerName)) == ["sshfs", "nbd", "loop", "dm-crypt", "filesystem"])
        #expect(layers.map(\.place).contains("/run/x/offsite/sources/web1"))
        #expect(layers.first?.place == "/run/x/offsite/remote")
        #expect(layers.last(where: { $0.layerName == "filesystem" })?.place == "/mnt/offsite")
    }

    /// A record with a pid and one without, at the same place, are one layer.
    @Test func recordsOfOneLayerMatchWhateverOnlyOneOfThemKnows() {
        #expect(LayerRecord.nbdBridge(mountPoint: "/m", pid: 3).isSameLayer(as: .nbdBridge(mountPoint: "/m", pid: nil)))
        #expect(
            LayerRecord.loop(backingFile: "/i", device: "/dev/loop0").isSameLayer(
                as: .loop(backingFile: "/i", device: nil)))
        #expect(
            !LayerRecord.sshfs(source: "a:/", mountPoint: "/m").isSameLayer(as: .nbdBridge(mountPoint: "/m", pid: nil)))
        #expect(LayerRecord.crypt(name: "imgbackup-x").description == "dm-crypt mapping /dev/mapper/imgbackup-x")
    }
}
