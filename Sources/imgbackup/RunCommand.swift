import ArgumentParser
import Foundation
import ImgBackupCore
import ImgBackupOS
import Logging

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
        let config: Configuration
        do {
            config = try global.load()
        } catch {
            // A config that does not load still has someone to tell, if its [notify] reads.
            if let command = ConfigLoader.notifyCommandLeniently(path: global.configPath) {
                await FailureNotice(
                    command: command, runner: SubprocessCommandRunner(), logger: Logger(label: "imgbackup")
                )
                .send(target: target ?? "all", error: error)
            }
            throw error
        }
        let environment = global.environment(config)
        let notice = config.notifyCommand.map {
            FailureNotice(command: $0, runner: environment.runner, logger: environment.logger)
        }
        let time: Date
        do {
            time = try now.map(Self.parseTime) ?? Date()
        } catch {
            await notice?.send(target: target ?? "all", error: error)
            throw error
        }
        let names = all ? config.targets.filter { $0.copy != nil }.map(\.name) : [target!]
        if all && names.isEmpty {
            let error = ImgBackupError(
                .config, "no target in \(config.path) has a [copy] table", hint: "nothing to run")
            await notice?.send(target: "all", error: error)
            throw error
        }
        var firstFailure: ImgBackupError?
        for name in names {
            do {
                let target = try global.target(name, in: config, keys: keys)
                let report = try await RunOperation(
                    target: target, environment: environment, now: time, breakLock: breakLock
                ).run()
                global.say(Self.summary(report.record))
            } catch {
                await notice?.send(target: name, error: Entry.stopped(error))
                if !all { throw error }
                Terminal.printError("\(name): \(Entry.stopped(error).description)")
                firstFailure = firstFailure ?? Entry.stopped(error)
                // A stop signal ends the whole --all, not just this target.
                if StopSignals.shared.received != nil { break }
            }
        }
        if let firstFailure { throw ExitCode(firstFailure.code.exitStatus) }
    }

    static func parseTime(_ text: String) throws(ImgBackupError) -> Date {
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
