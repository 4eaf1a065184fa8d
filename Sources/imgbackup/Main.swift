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
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as ImgBackupError {
            Terminal.printError(error.description)
            exit(error.code.exitStatus)
        } catch let status as ExitCode {
            // A command that printed its own lines (run --all) and only sets the status.
            exit(status.rawValue)
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

struct ImgBackup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "imgbackup",
        abstract: "Encrypted block images on storage you don't trust.",
        discussion: """
            imgbackup keeps a LUKS2 image on a remote host (reached over sshfs or NBD), opens it \
            locally with dm-crypt and mounts the filesystem inside. The remote only ever \
            sees ciphertext; the key never leaves this machine.

            Exit status: 0 success; 1 usage or config error; 2 copy step failed; 3 hang \
            detected; 4 locked or already open; 5 key or LUKS error; 6 remote error; \
            7 local system error; 8 teardown left something up.
            """,
        subcommands: [
            InitCommand.self, OpenCommand.self, CloseCommand.self, RunCommand.self, TrimCommand.self, KeyCommand.self,
            ResizeCommand.self, StatusCommand.self, DoctorCommand.self, AuthorizedKeysCommand.self, NBDBridgeCommand.self,
        ]
    )
}
