import ArgumentParser
import Foundation
import ImgBackupCore

/// Where the key comes from when not from the config: the command line, or
/// a systemd credential. Precedence: --key-file / --key-fd, then the
/// credential `imgbackup.TARGET` (LoadCredential= / LoadCredentialEncrypted=),
/// then the target's key_file or key_command.
struct KeyOptions: ParsableArguments {
    @Option(name: .customLong("key-file"), help: ArgumentHelp(
        "Read the key from FILE instead of the config's key source; '-' reads it from standard input.",
        valueName: "FILE"))
    var keyFile: String?

    @Option(name: .customLong("key-fd"), help: ArgumentHelp(
        "Read the key from the open file descriptor N, to end of file.", valueName: "N"))
    var keyDescriptor: Int32?

    var isGiven: Bool { keyFile != nil || keyDescriptor != nil }

    /// Whether the key comes from standard input (`--key-file -` or `--key-fd 0`).
    var readsStandardInput: Bool { keyFile == "-" || keyDescriptor == 0 }

    func validate() throws {
        if keyFile != nil && keyDescriptor != nil {
            throw ValidationError("give --key-file or --key-fd, not both")
        }
        if let keyDescriptor, keyDescriptor < 0 || keyDescriptor == 1 || keyDescriptor == 2 {
            throw ValidationError("--key-fd \(keyDescriptor) is not a descriptor to read a key from (0, or 3 and up)")
        }
    }

    /// The target with its key source resolved.
    func resolve(_ target: Target, environment: [String: String]) throws(ImgBackupError) -> Target {
        var target = target
        if let keyFile {
            if keyFile == "-" {
                guard isatty(STDIN_FILENO) == 0 else {
                    throw ImgBackupError(
                        .usage, "refusing to read the key from a terminal",
                        hint: "pipe it in: pass show imgbackup/\(target.name) | imgbackup ... --key-file -")
                }
                target.key = .descriptor(STDIN_FILENO)
            } else {
                target.key = .file(URL(fileURLWithPath: keyFile).standardizedFileURL.path)
            }
        } else if let keyDescriptor {
            target.key = .descriptor(keyDescriptor)
        } else if let directory = environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty {
            let credential = "\(directory)/imgbackup.\(target.name)"
            if FileManager.default.fileExists(atPath: credential) { target.key = .credential(credential) }
        }
        return target
    }
}
