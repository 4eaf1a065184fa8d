import Foundation
import Testing

@testable import ImgBackupCore

/// The `status --json` shape scripts rely on (docs/usage.md) and the text
/// people read. What status finds on a live system: e2e/test_status.py.
@Suite struct StatusTests {
    static let start = Date(timeIntervalSince1970: 1_795_000_000)

    static func status(state: TargetStatus.State = .closed, lastRun: RunRecord? = nil) -> TargetStatus {
        TargetStatus(
            target: "laptop", transport: "sshfs", remote: "backup@host:/srv/laptop", mountPoint: "/mnt/laptop",
            state: state, layers: [], stateRecord: nil, lockHolder: nil, lastRun: lastRun, lastSuccess: nil, image: nil,
            mountUsage: nil)
    }

    @Test func everyKeyIsPresentAndUnknownsAreNull() throws {
        let json = try TargetStatus.json([Self.status()])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let targets = try #require(object["targets"] as? [[String: Any]])
        let target = try #require(targets.first)
        #expect(
            Set(target.keys) == [
                "target", "transport", "remote", "mountPoint", "state", "layers", "stateRecord", "lockHolder",
                "lastRun",
                "lastSuccess", "image", "mountUsage",
            ])
        for key in ["stateRecord", "lockHolder", "lastRun", "lastSuccess", "image", "mountUsage"] {
            #expect(target[key] is NSNull, "\(key)")
        }
        #expect(target["state"] as? String == "closed")

        var withLock = Self.status(state: .open)
        withLock.layers = [.init(layer: "lock", detail: "remote lock", recorded: true, up: nil)]
        let layers = try #require(
            ((try JSONSerialization.jsonObject(with: Data(TargetStatus.json([withLock]).utf8)) as? [String: Any])?[
                "targets"]
                as? [[String: Any]])?.first?["layers"] as? [[String: Any]])
        #expect(Set(layers[0].keys) == ["layer", "detail", "recorded", "up"])
        #expect(layers[0]["up"] is NSNull)

        var overSSHFS = Self.status(state: .open)
        overSSHFS.image = .init(apparentBytes: 1 << 30, allocatedBytes: nil, source: .live, measuredAt: Self.start)
        let image = try #require(
            ((try JSONSerialization.jsonObject(with: Data(TargetStatus.json([overSSHFS]).utf8)) as? [String: Any])?[
                "targets"]
                as? [[String: Any]])?.first?["image"] as? [String: Any])
        #expect(Set(image.keys) == ["apparentBytes", "allocatedBytes", "source", "measuredAt"])
        #expect(image["allocatedBytes"] is NSNull)
    }

    @Test func anOpenTargetWithItsRunAndSizesRoundTrips() throws {
        var run = RunRecord(target: "laptop", start: Self.start)
        run.end = Self.start.addingTimeInterval(83)
        run.result = .success
        run.exitCode = 0
        run.bytesWritten = 3 << 20
        run.point = "snapshots/2026-11-18T030000Z"
        var status = Self.status(state: .open, lastRun: run)
        status.layers = [
            .init(layer: "sshfs", detail: "sshfs mount", recorded: true, up: true),
            .init(layer: "lock", detail: "remote lock", recorded: true, up: nil),
        ]
        status.stateRecord = .init(operation: .open, pid: 4242, running: false, startedAt: Self.start)
        status.lockHolder = 777
        status.lastSuccess = run.end
        status.image = .init(apparentBytes: 64 << 20, allocatedBytes: 12 << 20, source: .trim, measuredAt: Self.start)
        status.mountUsage = .init(sizeBytes: 60 << 20, usedBytes: 10 << 20, availableBytes: 50 << 20)

        let json = try TargetStatus.json([status])
        let decoded = try RunHistory.decoder().decode([String: [TargetStatus]].self, from: Data(json.utf8))
        #expect(decoded["targets"] == [status])

        let text = status.text(now: Self.start.addingTimeInterval(3600))
        #expect(text.hasPrefix("laptop: open at /mnt/laptop over sshfs\n"))
        #expect(text.contains("  layers: sshfs up, lock recorded\n"))
        #expect(text.contains("  locked by: pid 777\n"))
        #expect(text.contains("  last run: success at 2026-11-"))
        #expect(text.contains("in 1m 23s, 3 MiB written, point snapshots/2026-11-18T030000Z"))
        #expect(!text.contains("last success"))  // the last run was the success
        #expect(text.contains("  image: 64 MiB apparent, 12 MiB allocated on the remote (at the trim of 2026-11-"))
        #expect(text.hasSuffix("  filesystem: 10 MiB used of 60 MiB, 50 MiB free"))
    }

    @Test func aFailedLastRunShowsItsErrorAndTheLastSuccess() {
        var run = RunRecord(target: "laptop", start: Self.start)
        run.end = Self.start.addingTimeInterval(40)
        run.result = .failure
        run.exitCode = 3
        run.error = "imgbackup: error: the remote stopped answering"
        var status = Self.status(lastRun: run)
        status.lastSuccess = Self.start.addingTimeInterval(-26 * 3600)
        let text = status.text(now: Self.start.addingTimeInterval(60))
        #expect(text.contains("  last run: failure at "))
        #expect(text.contains(", exit 3\n    imgbackup: error: the remote stopped answering\n"))
        #expect(text.contains("(1d 2h ago)"))
        #expect(Self.status().text().contains("  last run: none recorded\n  last success: never"))
    }

    @Test func aPartlyUpTargetSaysToClose() {
        var status = Self.status(state: .partial)
        status.layers = [.init(layer: "dm-crypt", detail: "mapping", recorded: true, up: true)]
        status.stateRecord = .init(operation: .run, pid: 99999, running: false, startedAt: Self.start)
        let text = status.text()
        #expect(text.hasPrefix("laptop: partly up: run 'imgbackup close laptop'"))
        #expect(text.contains("  left by: 'run' (pid 99999, no longer running)"))
    }
}
