import Foundation
import ImgBackupOS
import Logging
import Testing

@testable import ImgBackupCore

/// The rsync and borg methods with the real tools, into a plain directory
/// standing in for the mounted image (no kernel feature needed; the
/// real-kernel suite runs them inside the LUKS image).
@Suite(.serialized) struct CopyMethodTests {
    let root: String
    let source: String
    let mount: String
    let environment: OperationEnvironment

    init() throws {
        root = makeScratchDirectory("copy")
        source = root + "/source"
        mount = root + "/mount"
        for directory in [source + "/data/cache", mount, root + "/state", root + "/run"] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        try "unchanged".write(toFile: source + "/data/same.txt", atomically: false, encoding: .utf8)
        try "version 1".write(toFile: source + "/data/changing.txt", atomically: false, encoding: .utf8)
        try "skip me".write(toFile: source + "/data/cache/junk", atomically: false, encoding: .utf8)
        environment = OperationEnvironment(
            paths: RuntimePaths(runtimeDirectory: root + "/run", stateDirectory: root + "/state"),
            logger: Logger(label: "test"))
    }

    func context(_ copy: Target.Copy, at time: String) -> CopyContext {
        let target = Target(
            name: "t", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "t.img", key: .file("/k"),
            mountPoint: mount)
        return CopyContext(
            target: target, copy: copy, mountPoint: mount, now: ISO8601DateFormatter().date(from: time)!,
            environment: environment)
    }

    func inode(_ path: String) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? NSNumber)?.uint64Value ?? 0
    }

    @Test func rsyncMakesHardLinkedSnapshotsAndPrunes() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var copy = Target.Copy(method: .rsync)
        copy.sources = [source + "/data"]
        // With --relative, patterns match the whole source path.
        copy.exclude = [source + "/data/cache"]
        let method = RsyncCopy()

        let first = try await method.copy(context(copy, at: "2026-03-01T03:00:00Z"))
        #expect(first.point == "snapshots/2026-03-01T030000Z")
        let one = "\(mount)/snapshots/2026-03-01T030000Z\(source)/data"
        #expect(try String(contentsOfFile: one + "/changing.txt", encoding: .utf8) == "version 1")
        #expect(!FileManager.default.fileExists(atPath: one + "/cache/junk"))

        try "version 2".write(toFile: source + "/data/changing.txt", atomically: false, encoding: .utf8)
        // Same size: rsync's quick check needs the time to differ, as it would a day later.
        try FileManager.default.setAttributes(
            [.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: source + "/data/changing.txt")
        _ = try await method.copy(context(copy, at: "2026-03-02T03:00:00Z"))
        let two = "\(mount)/snapshots/2026-03-02T030000Z\(source)/data"
        #expect(try String(contentsOfFile: two + "/changing.txt", encoding: .utf8) == "version 2")
        #expect(try String(contentsOfFile: one + "/changing.txt", encoding: .utf8) == "version 1")
        // Incremental: the unchanged file is the same inode in both snapshots.
        #expect(try inode(one + "/same.txt") == inode(two + "/same.txt"))
        #expect(try inode(one + "/changing.txt") != inode(two + "/changing.txt"))
        #expect(
            try FileManager.default.destinationOfSymbolicLink(atPath: "\(mount)/snapshots/latest")
                == "2026-03-02T030000Z")

        _ = try await method.copy(context(copy, at: "2026-03-03T03:00:00Z"))
        let pruned = try await method.prune(
            context(copy, at: "2026-03-03T03:00:00Z"), policy: RetentionPolicy(keepDaily: 2))
        #expect(pruned == ["2026-03-01T030000Z"])
        let left = try FileManager.default.contentsOfDirectory(atPath: "\(mount)/snapshots").sorted()
        #expect(left == ["2026-03-02T030000Z", "2026-03-03T030000Z", "latest"])
    }

    @Test func rsyncFailureLeavesNoSnapshotAndTheNextRunContinues() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var copy = Target.Copy(method: .rsync)
        copy.sources = [source + "/data", root + "/does-not-exist"]
        let error = await #expect(throws: ImgBackupError.self) {
            try await RsyncCopy().copy(context(copy, at: "2026-03-01T03:00:00Z"))
        }
        #expect(error?.code == .copyFailed)
        #expect(error?.message.contains("rsync exited with status 23") == true)
        #expect(context(copy, at: "2026-03-01T03:00:00Z").backupPoints(in: mount + "/snapshots").isEmpty)

        copy.sources = [source + "/data"]
        let outcome = try await RsyncCopy().copy(context(copy, at: "2026-03-01T04:00:00Z"))
        #expect(outcome.point == "snapshots/2026-03-01T040000Z")
        #expect(!FileManager.default.fileExists(atPath: mount + "/snapshots/.incomplete"))
    }

    @Test func borgWithAPassphraseFileEncryptsTheRepositoryAndPrunes() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let passphrase = root + "/borg.pass"
        try "correct horse battery staple\n".write(toFile: passphrase, atomically: false, encoding: .utf8)
        chmod(passphrase, 0o600)
        var copy = Target.Copy(method: .borg)
        copy.sources = [source + "/data"]
        copy.exclude = [source + "/data/cache"]
        copy.borgPassphraseFile = passphrase
        let method = BorgCopy()
        for day in 1...3 {
            let outcome = try await method.copy(context(copy, at: "2026-03-0\(day)T03:00:00Z"))
            #expect(outcome.point == "borg::2026-03-0\(day)T030000Z")
            #expect((outcome.bytesCopied ?? 0) > 0)
        }
        let pruned = try await method.prune(
            context(copy, at: "2026-03-03T03:00:00Z"), policy: RetentionPolicy(keepDaily: 2))
        #expect(pruned == ["2026-03-01T030000Z"])

        // The repository is encrypted with that passphrase: borg without it fails.
        let runner = SubprocessCommandRunner()
        let locked = try await runner.run(
            Command(
                "borg", ["list", "--short", mount + "/borg"], timeout: .seconds(60),
                environment: ["BORG_BASE_DIR": root + "/state/t/borg", "BORG_PASSPHRASE": "wrong"]))
        #expect(!locked.succeeded)
        let listed = try await runner.run(
            Command(
                "borg", ["list", "--short", mount + "/borg"], timeout: .seconds(60),
                environment: [
                    "BORG_BASE_DIR": root + "/state/t/borg", "BORG_PASSPHRASE": "correct horse battery staple",
                ]))
        #expect(listed.standardOutput == "2026-03-02T030000Z\n2026-03-03T030000Z\n")
    }

    @Test func aLooseBorgPassphraseFileIsRefused() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let passphrase = root + "/borg.pass"
        try "secret".write(toFile: passphrase, atomically: false, encoding: .utf8)
        chmod(passphrase, 0o644)
        var copy = Target.Copy(method: .borg)
        copy.sources = [source]
        copy.borgPassphraseFile = passphrase
        let error = await #expect(throws: ImgBackupError.self) {
            try await BorgCopy().copy(context(copy, at: "2026-03-01T03:00:00Z"))
        }
        #expect(error?.description.contains("group or others can access it (mode 644)") == true)
        #expect(!FileManager.default.fileExists(atPath: mount + "/borg"))
    }
}
