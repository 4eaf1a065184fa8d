import Foundation
import Testing

@testable import ImgBackupCore

/// The files under /run/imgbackup and /var/lib/imgbackup outlive a release:
/// an upgrade between `open` and `close`, or a history written for years.
/// These are in the exact form release 0.9.0 (f3c0fa7) wrote them: the same
/// encoder settings, the layers' synthesized coding, the operation by name.
@Suite struct StateFormatTests {
    static let stateRecordOf090 = """
        {
          "layers" : [
            {
              "sshfs" : {
                "mountPoint" : "\\/run\\/imgbackup\\/offsite\\/remote",
                "source" : "backup@host:\\/srv\\/laptop"
              }
            },
            {
              "remoteLock" : {
                "path" : "\\/run\\/imgbackup\\/offsite\\/remote\\/laptop.img.lock",
                "token" : "6F1C0E2A-4B7D-4C51-9E0F-2D8A1B3C4D5E"
              }
            },
            {
              "loop" : {
                "backingFile" : "\\/run\\/imgbackup\\/offsite\\/remote\\/laptop.img",
                "device" : "\\/dev\\/loop0"
              }
            },
            {
              "crypt" : {
                "name" : "imgbackup-offsite"
              }
            },
            {
              "filesystem" : {
                "device" : "\\/dev\\/mapper\\/imgbackup-offsite",
                "mountPoint" : "\\/mnt\\/offsite"
              }
            },
            {
              "nbdBridge" : {
                "mountPoint" : "\\/run\\/imgbackup\\/offsite\\/nbd"
              }
            },
            {
              "partialImage" : {
                "path" : "\\/run\\/imgbackup\\/offsite\\/remote\\/.laptop.img.partial"
              }
            }
          ],
          "operation" : "run",
          "pid" : 4242,
          "startedAt" : "2026-12-01T02:00:03Z",
          "target" : "offsite"
        }
        """

    @Test func aStateRecordOfTheLastReleaseLoadsAndCanBeClosedFrom() throws {
        let root = makeScratchDirectory("format")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = RuntimePaths(runtimeDirectory: root, stateDirectory: root + "/state")
        try Self.stateRecordOf090.write(toFile: paths.stateRecord("offsite"), atomically: true, encoding: .utf8)
        let record = try #require(try StateStore(paths: paths).load(target: "offsite"))
        #expect(record.operation == .run && record.operation.isUnattended)
        #expect(record.pid == 4242)
        #expect(record.startedAt == Date(timeIntervalSince1970: 1_796_090_403))
        #expect(
            record.layers == [
                .sshfs(source: "backup@host:/srv/laptop", mountPoint: "/run/imgbackup/offsite/remote"),
                .remoteLock(
                    path: "/run/imgbackup/offsite/remote/laptop.img.lock", token: "6F1C0E2A-4B7D-4C51-9E0F-2D8A1B3C4D5E"
                ),
                .loop(backingFile: "/run/imgbackup/offsite/remote/laptop.img", device: "/dev/loop0"),
                .crypt(name: "imgbackup-offsite"),
                .filesystem(device: "/dev/mapper/imgbackup-offsite", mountPoint: "/mnt/offsite"),
                .nbdBridge(mountPoint: "/run/imgbackup/offsite/nbd", pid: nil),
                .partialImage(path: "/run/imgbackup/offsite/remote/.laptop.img.partial"),
            ])
        // Saved again, it is the same document: a downgrade reads it too.
        try StateStore(paths: paths).save(record)
        let again = try String(contentsOfFile: paths.stateRecord("offsite"), encoding: .utf8)
        #expect(again == Self.stateRecordOf090)
    }

    @Test func everyOperationNameOfTheLastReleaseMeansWhatItDid() throws {
        let names = ["open", "init", "run", "trim", "resize", "key", "close"]
        for name in names {
            let operation = StateRecord.Operation(name: name)
            #expect(operation.name == name)
            #expect(operation.isUnattended == ["run", "init", "trim", "resize", "key"].contains(name), "\(name)")
            #expect(String(decoding: try JSONEncoder().encode(operation), as: UTF8.self) == "\"\(name)\"")
        }
    }

    /// A run history line and an image measurement of 0.9.0.
    @Test func theRunHistoryAndImageMeasurementOfTheLastReleaseLoad() throws {
        let root = makeScratchDirectory("format")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = RuntimePaths(runtimeDirectory: root, stateDirectory: root)
        try FileManager.default.createDirectory(
            atPath: paths.targetStateDirectory("offsite"), withIntermediateDirectories: true)
        let run = """
            {"bytesCopied":1048576,"bytesWritten":2097152,"end":"2026-12-01T02:01:00Z","exitCode":0,"incremental":true,"method":"rsync","point":"snapshots/2026-12-01T020003Z","result":"interrupted","start":"2026-12-01T02:00:03Z","target":"offsite"}
            """
        try (run + "\n").write(toFile: paths.runHistory("offsite"), atomically: true, encoding: .utf8)
        let record = try #require(RunHistory(paths: paths).last("offsite"))
        #expect(record.result == .interrupted && record.bytesWritten == 2 << 20 && record.incremental == true)
        let image = """
            {"allocatedBytes":20971520,"apparentBytes":100663296,"measuredAt":"2026-12-01T03:00:00Z","source":"trim"}
            """
        try (image + "\n").write(toFile: paths.imageMeasurement("offsite"), atomically: true, encoding: .utf8)
        let measured = try #require(ImageMeasurement(paths: paths).last("offsite"))
        #expect(measured.source == .trim && measured.allocatedBytes == 20 << 20)
    }
}
