import ArgumentParser
import Foundation
import ImgBackupCore

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "The scheduled job: open, pre-hooks, copy, retention, post-hooks, close.",
        discussion: """
            Takes the target's lock, brings the image up over its transport, runs the \
            [copy] method (rsync, borg, btrfs-send or command), prunes by [retention], and \
            always closes, also when something failed. Every run is recorded in \
            /var/lib/imgbackup/TARGET/runs.jsonl. With --all, runs each target that has a \
            [copy] table, one after another, and exits with the first failure's status.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String?

    @Flag(help: "Run every target that has a [copy] table.")
    var all = false

    @Flag(help: "Take the remote lock even if another machine's or target's lock file is there.")
    var breakLock = false

    /// Tests run weeks of backups in minutes: the run's time, ISO 8601.
    @Option(help: .hidden)
    var now: String?

    func validate() throws {
        if all == (target != nil) {
            throw ValidationError("give a TARGET or --all, not both and not neither")
        }
        if all && keys.isGiven {
            throw ValidationError("--key-file and --key-fd give one target's key: not with --all")
        }
    }

    func run() async throws {
        let config = try global.load()
        let environment = global.environment(config)
        let time = try now.map(Self.parseTime) ?? Date()
        let targets = all
            ? try config.targets.filter { $0.copy != nil }.map { (target) throws(ImgBackupError) in
                try keys.resolve(target, environment: ProcessInfo.processInfo.environment)
            }
            : [try global.target(target!, in: config, keys: keys)]
        if all && targets.isEmpty {
            throw ImgBackupError(.config, "no target in \(config.path) has a [copy] table", hint: "nothing to run")
        }
        var firstFailure: ImgBackupError?
        for target in targets {
            do {
                let report = try await RunOperation(target: target, environment: environment, now: time, breakLock: breakLock).run()
                print(Self.summary(report.record))
            } catch {
                if !all { throw error }
                Terminal.printError("\(target.name): \(error.description)")
                firstFailure = firstFailure ?? error
            }
        }
        if let firstFailure { throw ExitCode(firstFailure.code.exitStatus) }
    }

    static func parseTime(_ text: String) throws -> Date {
        guard let date = ISO8601DateFormatter().date(from: text) else {
            throw ImgBackupError(.usage, "--now '\(text)' is not an ISO 8601 time like 2026-11-22T03:00:00Z")
        }
        return date
    }

    /// "offsite: backed up snapshots/2026-11-22T030000Z, 12.3 MiB written to the image in 41 s"
    static func summary(_ record: RunRecord) -> String {
        var parts = ["\(record.target): backed up \(record.point ?? "with \(record.method ?? "the copy step")")"]
        if let written = record.bytesWritten { parts.append("\(ByteSize.format(written)) written to the image") }
        if let copied = record.bytesCopied { parts.append("\(ByteSize.format(copied)) copied") }
        if let pruned = record.pruned, !pruned.isEmpty { parts.append("pruned \(pruned.count)") }
        if let duration = record.duration { parts.append("in \(Int(duration.rounded())) s") }
        return parts.joined(separator: ", ")
    }
}
