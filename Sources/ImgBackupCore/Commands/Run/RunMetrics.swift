import Foundation
import ImgBackupOS

/// The last run of a target as Prometheus textfile-collector metrics
/// (`DIRECTORY/imgbackup-TARGET.prom`), written after every run, failed ones
/// too, so a fleet's monitoring can alert on a stale backup. One file per
/// target: runs of different targets never write the same file.
public struct RunMetrics: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// Without a `[metrics]` table: beside the run history.

    public func file(_ target: String) -> String { "\(directory)/imgbackup-\(target).prom" }

    /// Writes `record`'s metrics in one step (node_exporter never reads half
    /// a file), readable by a node_exporter that does not run as root.
    public func write(_ record: RunRecord, history: RunHistory, image: TargetStatus.Image?) throws(ImgBackupError) {
        let lastSuccess =
            record.result == .success ? record.end : history.records(record.target).last { $0.result == .success }?.end
        let text = Self.text(record, lastSuccess: lastSuccess, image: image)
        do {
            try LocalFiles.makeDirectories(directory)
            try LocalFiles.writeAtomically(file(record.target), text, mode: 0o644)
        } catch {
            throw ImgBackupError.wrapping(
                error, .system, failedTo: "write the metrics of \(record.target) to \(file(record.target))")
        }
    }

    struct Metric: Sendable {
        let name: String
        let help: String
        let value: @Sendable (RunRecord, Date?, TargetStatus.Image?) -> Int64?
    }

    /// Times are whole seconds: the run history keeps whole seconds, and the
    /// last success must read the same whether it is this run or an older one.
    static func seconds(_ date: Date) -> Int64 { Int64(date.timeIntervalSince1970.rounded(.down)) }

    static let metrics: [Metric] = [
        Metric(name: "imgbackup_last_run_start_timestamp_seconds", help: "When the last run of the target started.") {
            record, _, _ in
            seconds(record.start)
        },
        Metric(name: "imgbackup_last_run_end_timestamp_seconds", help: "When the last run of the target ended.") {
            record, _, _ in
            record.end.map(seconds)
        },
        Metric(name: "imgbackup_last_run_duration_seconds", help: "How long the last run took.") { record, _, _ in
            record.end.map { seconds($0) - seconds(record.start) }
        },
        Metric(name: "imgbackup_last_run_success", help: "1 if the last run succeeded, else 0.") { record, _, _ in
            record.result == .success ? 1 : 0
        },
        Metric(
            name: "imgbackup_last_run_exit_code", help: "The exit status of the last run (docs/usage.md, exit codes)."
        ) { record, _, _ in
            record.exitCode.map(Int64.init)
        },
        Metric(
            name: "imgbackup_last_success_timestamp_seconds",
            help: "When the last successful run of the target ended; 0 if none has."
        ) { _, lastSuccess, _ in
            lastSuccess.map(seconds) ?? 0
        },
        Metric(
            name: "imgbackup_last_run_bytes_copied",
            help: "Bytes the copy tool reported copying in the last run (rsync, borg)."
        ) { record, _, _ in
            record.bytesCopied.map { Int64(clamping: $0) }
        },
        Metric(
            name: "imgbackup_last_run_bytes_written",
            help: "Bytes written to the image's dm-crypt device in the last run."
        ) { record, _, _ in
            record.bytesWritten.map { Int64(clamping: $0) }
        },
        Metric(
            name: "imgbackup_last_run_wire_bytes_sent",
            help: "Bytes the target's own connections sent on the wire in the last run (ssh's stream, over TCP)."
        ) { record, _, _ in
            record.wireBytesSent.map { Int64(clamping: $0) }
        },
        Metric(
            name: "imgbackup_last_run_wire_bytes_received",
            help: "Bytes the target's own connections received on the wire in the last run."
        ) { record, _, _ in
            record.wireBytesReceived.map { Int64(clamping: $0) }
        },
        Metric(name: "imgbackup_image_apparent_bytes", help: "The remote image file's apparent size, as last measured.")
        { _, _, image in
            image?.apparentBytes.map { Int64(clamping: $0) }
        },
        Metric(
            name: "imgbackup_image_allocated_bytes",
            help: "Bytes the remote image file takes on the backup host, as last measured (over NBD only)."
        ) { _, _, image in
            image?.allocatedBytes.map { Int64(clamping: $0) }
        },
    ]

    /// The exposition text. A value that is not known (bytes a tool did not
    /// report, sizes a transport cannot tell) is left out, not written as 0.
    static func text(_ record: RunRecord, lastSuccess: Date?, image: TargetStatus.Image?) -> String {
        let labels = "{target=\"\(labelValue(record.target))\"}"
        var lines: [String] = []
        for metric in metrics {
            guard let value = metric.value(record, lastSuccess, image) else { continue }
            lines += [
                "# HELP \(metric.name) \(metric.help)", "# TYPE \(metric.name) gauge",
                "\(metric.name)\(labels) \(value)",
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The exposition format's escapes for a label value.
    static func labelValue(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
