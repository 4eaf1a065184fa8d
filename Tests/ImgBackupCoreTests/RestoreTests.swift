import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

/// `list` and `restore` through each copy method's points and restore, with
/// the real rsync and borg, in CopyMethodTests' plain directory standing in
/// for the mounted image.
extension CopyMethodTests {
    func changeTheSource() throws {
        try "version 2".write(toFile: source + "/data/changing.txt", atomically: false, encoding: .utf8)
        try FileManager.default.setAttributes(
            [.modificationDate: Date().addingTimeInterval(60)], ofItemAtPath: source + "/data/changing.txt")
    }

    func text(_ path: String) throws -> String { try String(contentsOfFile: path, encoding: .utf8) }

    @Test(arguments: [Target.Copy.Method.rsync, .borg])
    func pointsAreListedAndRestoredUnderTheirOwnPaths(method kind: Target.Copy.Method) async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var copy = Target.Copy(method: kind)
        copy.sources = [source + "/data"]
        let method = CopyMethods.make(kind)
        _ = try await method.copy(context(copy, at: "2026-03-01T03:00:00Z"))
        try changeTheSource()
        _ = try await method.copy(context(copy, at: "2026-03-02T03:00:00Z"))
        let reading = context(copy, at: "2026-03-05T00:00:00Z")

        let points = try await method.points(reading)
        #expect(points.map(\.name) == ["2026-03-01T030000Z", "2026-03-02T030000Z"])
        #expect(points.map(\.complete) == [true, true])
        #expect(points.first?.time == ISO8601DateFormatter().date(from: "2026-03-01T03:00:00Z"))
        let latest = try BackupPoint.pick(nil, from: points, target: "t")
        #expect(latest.name == "2026-03-02T030000Z")

        let restored = root + "/restored"
        try await method.restore(
            reading, point: try BackupPoint.pick("2026-03-01T030000Z", from: points, target: "t"),
            paths: [source + "/data/changing.txt"], into: restored)
        #expect(try text(restored + source + "/data/changing.txt") == "version 1")
        #expect(try FileManager.default.contentsOfDirectory(atPath: restored + source + "/data") == ["changing.txt"])
        try await method.restore(reading, point: latest, paths: [source + "/data"], into: restored)
        #expect(try text(restored + source + "/data/changing.txt") == "version 2")
        #expect(try text(restored + source + "/data/same.txt") == "unchanged")

        let error = await #expect(throws: ImgBackupError.self) {
            try await method.restore(reading, point: latest, paths: [source + "/data/nope"], into: restored)
        }
        #expect(error?.code == .usage)
        #expect(error?.message == "restore: \(source)/data/nope is not in \(latest.location)")
    }

    @Test func aPathThroughASymlinkInTheBackupIsRefusedNotFollowedOut() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createSymbolicLink(atPath: source + "/data/elsewhere", withDestinationPath: "/etc")
        var copy = Target.Copy(method: .rsync)
        copy.sources = [source + "/data"]
        let reading = context(copy, at: "2026-03-01T03:00:00Z")
        _ = try await RsyncCopy().copy(reading)
        let point = try BackupPoint.pick(nil, from: try await RsyncCopy().points(reading), target: "t")
        let restored = root + "/restored"
        let error = await #expect(throws: ImgBackupError.self) {
            try await RsyncCopy().restore(
                reading, point: point, paths: [source + "/data/elsewhere/hostname"], into: restored)
        }
        #expect(error?.message.contains("goes through \(source)/data/elsewhere, a symbolic link") == true)
        #expect(!FileManager.default.fileExists(atPath: restored + source + "/data/elsewhere/hostname"))
        // The link itself comes back as a link.
        try await RsyncCopy().restore(reading, point: point, paths: [source + "/data/elsewhere"], into: restored)
        #expect(
            try FileManager.default.destinationOfSymbolicLink(atPath: restored + source + "/data/elsewhere") == "/etc")
    }

    @Test func restoreNeverWritesIntoAnImageOrTheRuntimeDirectory() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let target = Target(
            name: "t", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "t.img", key: .file("/k"),
            mountPoint: mount)
        func directory(_ path: String) throws -> String {
            try RestoreOperation(target: target, environment: environment, point: nil, paths: ["/"], directory: path)
                .usableDirectory()
        }
        for inside in [mount, mount + "/snapshots", root + "/run/t", root + "/restore/../mount/x"] {
            #expect(throws: ImgBackupError.self) { try directory(inside) }
        }
        #expect(try directory(root + "/./restore/") == root + "/restore")
        #expect(FileManager.default.fileExists(atPath: root + "/restore"))
    }

    @Test func aFailedRsyncRunsSnapshotIsListedIncompleteAndNotPickedAsLatest() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var copy = Target.Copy(method: .rsync)
        copy.sources = [source + "/data"]
        _ = try await RsyncCopy().copy(context(copy, at: "2026-03-01T03:00:00Z"))
        try FileManager.default.createDirectory(
            atPath: mount + "/snapshots/.incomplete", withIntermediateDirectories: false)
        let points = try await RsyncCopy().points(context(copy, at: "2026-03-02T00:00:00Z"))
        #expect(points.map(\.name) == ["2026-03-01T030000Z", ".incomplete"])
        #expect(points.map(\.complete) == [true, false])
        #expect(try BackupPoint.pick("latest", from: points, target: "t").name == "2026-03-01T030000Z")
        #expect(try BackupPoint.pick(".incomplete", from: points, target: "t").complete == false)
        #expect(throws: ImgBackupError.self) { try BackupPoint.pick("2020-01-01T000000Z", from: points, target: "t") }
        #expect(throws: ImgBackupError.self) { try BackupPoint.pick(nil, from: [], target: "t") }
    }
}

@Suite struct RestoreParsingTests {
    @Test func pathsAreAbsoluteAsOnTheSource() throws {
        #expect(
            try BackupPoint.checkedSourcePaths(["/", "/etc//ssh/", "/home/alice"]) == ["/", "/etc/ssh", "/home/alice"])
        for bad in ["etc/ssh", "/etc/../root", "/etc/./ssh", ""] {
            #expect(throws: ImgBackupError.self) { try BackupPoint.checkedSourcePaths([bad]) }
        }
    }

    @Test func receivedSnapshotsAreTheReadOnlyOnesWithAReceivedUUID() {
        let listing = """
            ID 257 gen 7 top level 5 received_uuid -                                    path snap1
            ID 258 gen 8 top level 5 received_uuid 4550a99b-d11a-dc44-b56b-caf2b76b396d path snapshots/2026-03-01T030000Z
            ID 260 gen 9 top level 5 received_uuid 6650a99b-d11a-dc44-b56b-caf2b76b396d path snapshots/with space
            """
        #expect(
            BtrfsSendCopy.receivedPaths(listing) == ["snapshots/2026-03-01T030000Z", "snapshots/with space"])
    }

    @Test func borgSaysWhichPathItDidNotFind() {
        #expect(BorgCopy.unmatched("Include pattern 'etc/nope' never matched.\n") == "etc/nope")
        #expect(BorgCopy.unmatched("some other warning\n") == nil)
        let archives = BorgCopy.archives(
            #"{"archives": [{"name": "2026-03-01T030000Z", "start": "2026-03-01T03:00:00.000000"}, {"name": "x.checkpoint"}]}"#
        )
        #expect(archives?.map(\.name) == ["2026-03-01T030000Z", "x.checkpoint"])
        #expect(archives?.first?.start == ISO8601DateFormatter().date(from: "2026-03-01T03:00:00Z"))
        #expect(BorgCopy.archives("not json") == nil)
    }

    @Test func aReadOnlyOpenIsRecordedAsOne() {
        let operation = StateRecord.Operation(name: "open-read-only")
        #expect(operation == .openReadOnly && operation.name == "open-read-only")
        #expect(operation.isByHand && !operation.isUnattended)
    }
}

@Suite struct SetupTests {
    func setup(_ directory: String, sources: [String] = []) -> SetupOperation {
        SetupOperation(
            request: .init(
                name: "laptop", remote: RemoteLocation(user: "backup", host: "host", directory: "/srv/b \"x\""),
                port: 2222, size: "1T", filesystem: .btrfs, sources: sources,
                configPath: "\(directory)/imgbackup.toml"),
            runner: SubprocessCommandRunner())
    }

    @Test func theTableItWritesLoadsBackAsTheTarget() throws {
        let directory = makeScratchDirectory("setup")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let operation = setup(directory, sources: ["/etc", "/home/a\\b"])
        let target = try operation.writeTarget()
        #expect(target.remote.directory == "/srv/b \"x\"")
        #expect(target.port == 2222 && target.filesystem == .btrfs && target.image == "laptop.img")
        #expect(target.identityFile == "\(directory)/laptop.ssh")
        #expect(target.sshOptions == ["UserKnownHostsFile=\(directory)/known_hosts", "StrictHostKeyChecking=yes"])
        #expect(target.copy?.sources == ["/etc", "/home/a\\b"])
        #expect(throws: ImgBackupError.self) { try operation.refuseAnExistingTarget() }
    }

    @Test func aHostKeyIsTakenOnlyByItsFingerprint() throws {
        let keys = [
            SetupOperation.HostKey(line: "h ssh-ed25519 AAAA", fingerprint: "SHA256:good", type: "ED25519"),
            SetupOperation.HostKey(line: "h ssh-rsa AAAA", fingerprint: "SHA256:rsa", type: "RSA"),
        ]
        #expect(try SetupOperation.vouched("SHA256:good", among: keys, host: "h") == keys[0])
        let error = #expect(throws: ImgBackupError.self) {
            try SetupOperation.vouched("SHA256:evil", among: keys, host: "h")
        }
        #expect(error?.message.contains("none of its keys has the fingerprint SHA256:evil") == true)
    }

    @Test func aKeyFileIsMadeOnceAndNeverOverwritten() throws {
        let directory = makeScratchDirectory("setup-key")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/k.key"
        #expect(try KeyFile.createRandom(path: path, bytes: 64))
        let first = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(first.count == 64 && Set(first).count > 8)
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        #expect(try !KeyFile.createRandom(path: path, bytes: 64))
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == first)
    }
}
