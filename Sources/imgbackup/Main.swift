import ArgumentParser
import Foundation
import ImgBackupCore
import ImgBackupOS

/// Runs the command and turns every failure into one line on stderr and the
/// exit status docs/usage.md promises. argument-parser's own errors (usage, help)
/// keep their text but exit 1 for usage errors, as the contract says.
@main
enum Entry {
    static func main() async {
        ProcessHardening.apply()
        do {
            var command = try ImgBackup.parseAsRoot(
                GlobalOptions.movingLeadingGlobals(Array(CommandLine.arguments.dropFirst())))
            guard var asyncCommand = command as? AsyncParsableCommand else {
                return try command.run()
            }
            // The bridge is a FUSE daemon that its unmount ends; the rest
            // stop their work on a stop signal and close what they opened.
            guard !(asyncCommand is NBDBridgeCommand) else { return try await asyncCommand.run() }
            // Only the task below touches the command from here on.
            nonisolated(unsafe) var running = asyncCommand
            let work = Task { try await running.run() }
            try StopSignals.shared.install { signal, count in
                let name = StopSignals.name(of: signal)
                if count == 1 {
                    Terminal.printNotice("received \(name): stopping, and closing what is open")
                    work.cancel()
                } else {
                    Terminal.printNotice("received \(name) again: still closing (the teardown is not cut short)")
                }
            }
            try await work.value
        } catch let error as ImgBackupError {
            Terminal.printError(Self.stopped(error).description)
            exit(Self.stopped(error).code.exitStatus)
        } catch let status as ExitCode {
            // A command that printed its own lines (run --all) and only sets the status.
            exit(status.rawValue)
        } catch let error where StopSignals.shared.received != nil {
            let stopped = Self.stopped(.wrapping(error, .system, failedTo: "finish"))
            Terminal.printError(stopped.description)
            exit(stopped.code.exitStatus)
        } catch {
            let code = ImgBackup.exitCode(for: error)
            let message = ImgBackup.fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
                exit(0)
            }
            if !message.isEmpty { FileHandle.standardError.write(Data((message + "\n").utf8)) }
            exit(1)
        }
    }
}

extension Entry {
    /// A command a stop signal ended says so, and exits 9; one whose
    /// teardown left something up keeps its exit 8.
    static func stopped(_ error: ImgBackupError) -> ImgBackupError {
        guard let signal = StopSignals.shared.received, error.code != .interrupted, error.code != .invalidState else {
            return error
        }
        return ImgBackupError(
            .interrupted, "interrupted by \(StopSignals.name(of: signal)): \(error.message)", hint: error.hint,
            cause: error)
    }
}

struct ImgBackup: AsyncParsableCommand {
    /// The release; `--version` adds the git commit of the build.
    static let release = "0.9.0"

    static let configuration = CommandConfiguration(
        commandName: "imgbackup",
        abstract: "Encrypted block images on storage you don't trust.",
        discussion: """
            imgbackup keeps a LUKS2 image on a remote host (reached over sshfs or NBD), opens it \
            locally with dm-crypt and mounts the filesystem inside. The remote only ever \
            sees ciphertext; the key never leaves this machine.

            \(ExitStatus.helpText)
            """,
        version: "imgbackup \(release) (commit \(BuildInfo.commit))",
        subcommands: [
            SetupCommand.self, InitCommand.self, OpenCommand.self, CloseCommand.self, RunCommand.self, ListCommand.self,
            RestoreCommand.self, CheckCommand.self,
            TrimCommand.self, KeyCommand.self,
            ResizeCommand.self, StatusCommand.self, DoctorCommand.self, AuthorizedKeysCommand.self,
            NBDBridgeCommand.self,
        ]
    )
}
