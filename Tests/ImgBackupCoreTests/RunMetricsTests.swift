import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

/// The textfile metrics of a run; written by a real run in e2e/test_metrics.py.
@Suite struct RunMetricsTests {
    static let start = Date(timeIntervalSince1970: 1_795_000_000.75)

    static func record(_ result: RunRecord.Result, exitCode: Int32, start: Date = start) -> RunRecord {
        var record = RunRecord(target: "offsite", start: start)
        record.end = start.addingTimeInterval(41.5)
        record.result = result
        record.exitCode = exitCode
        return record
    }

    /// "name{labels}" -> value, and every name has its HELP and TYPE.
    static func samples(_ text: String) -> [String: String] {
        var samples: [String: String] = [:]
        let lines = text.split(separator: "\n").map(String.init)
        for line in lines where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            #expect(parts.count == 2, "\(line)")
            let name = String(parts[0].prefix { $0 != "{" })
            #expect(lines.contains("# TYPE \(name) gauge") && lines.contains { $0.hasPrefix("# HELP \(name) ") })
            samples[String(parts[0])] = String(parts[1])
        }
        return samples
    }

    @Test func aSuccessfulRunIsItsOwnLastSuccess() {
        var record = Self.record(.success, exitCode: 0)
        record.bytesCopied = 3 << 20
        record.bytesWritten = 4 << 20
        let image = TargetStatus.Image(
            apparentBytes: 96 << 20, allocatedBytes: 20 << 20, source: .run, measuredAt: Date())
        let samples = Self.samples(RunMetrics.text(record, lastSuccess: record.end, image: image))
        #expect(
            samples == [
                "imgbackup_last_run_start_timestamp_seconds{target=\"offsite\"}": "1795000000",
                "imgbackup_last_run_end_timestamp_seconds{target=\"offsite\"}": "1795000042",
                "imgbackup_last_run_duration_seconds{target=\"offsite\"}": "42",
                "imgbackup_last_run_success{target=\"offsite\"}": "1",
                "imgbackup_last_run_exit_code{target=\"offsite\"}": "0",
                "imgbackup_last_success_timestamp_seconds{target=\"offsite\"}": "1795000042",
                "imgbackup_last_run_bytes_copied{target=\"offsite\"}": "3145728",
                "imgbackup_last_run_bytes_written{target=\"offsite\"}": "4194304",
                "imgbackup_image_apparent_bytes{target=\"offsite\"}": "100663296",
                "imgbackup_image_allocated_bytes{target=\"offsite\"}": "20971520",
            ])
    }

    @Test func aFailedRunKeepsTheLastSuccessAndLeavesUnknownsOut() {
        let record = Self.record(.failure, exitCode: 6)
        let samples = Self.samples(RunMetrics.text(record, lastSuccess: nil, image: nil))
        #expect(samples["imgbackup_last_run_success{target=\"offsite\"}"] == "0")
        #expect(samples["imgbackup_last_run_exit_code{target=\"offsite\"}"] == "6")
        // Never succeeded: 0, so "no success in 26 h" fires from the first run on.
        #expect(samples["imgbackup_last_success_timestamp_seconds{target=\"offsite\"}"] == "0")
        #expect(!samples.keys.contains { $0.hasPrefix("imgbackup_last_run_bytes") || $0.hasPrefix("imgbackup_image") })
        #expect(RunMetrics.labelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd")
    }

    @Test func writtenInOneStepReadableByOthersWithTheLastSuccessFromTheHistory() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let history = RunHistory(paths: RuntimePaths(runtimeDirectory: root + "/run", stateDirectory: root + "/state"))
        let succeeded = Self.record(.success, exitCode: 0, start: Date(timeIntervalSince1970: 1_794_900_000))
        try history.append(succeeded)
        let failed = Self.record(.failure, exitCode: 3)
        try history.append(failed)

        let metrics = RunMetrics(directory: root + "/metrics")
        let previous = umask(0o077)
        defer { umask(previous) }
        try metrics.write(failed, history: history, image: nil)

        let samples = Self.samples(try String(contentsOfFile: metrics.file("offsite"), encoding: .utf8))
        #expect(samples["imgbackup_last_success_timestamp_seconds{target=\"offsite\"}"] == "1794900041")
        #expect(samples["imgbackup_last_run_exit_code{target=\"offsite\"}"] == "3")
        let attributes = try FileManager.default.attributesOfItem(atPath: metrics.file("offsite"))
        #expect((attributes[.posixPermissions] as? Int) == 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/metrics") == ["imgbackup-offsite.prom"])
    }
}
