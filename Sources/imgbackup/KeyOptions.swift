import ArgumentParser
import Foundation
import ImgBackupCore

/// --key-file and --key-fd; which key source wins is KeySourceChoice's to say.
struct KeyOptions: ParsableArguments {
    @Option(
        name: .customLong("key-file"),
        help: ArgumentHelp(
            "Read the key from FILE instead of the config's key source; '-' reads it from standard input.",
            valueName: "FILE"))
    var keyFile: String?

    @Option(
        name: .customLong("key-fd"),
        help: ArgumentHelp(
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

    /// The target with its key source resolved (precedence: KeySourceChoice).
    func resolve(_ target: Target, environment: [String: String]) throws(ImgBackupError) -> Target {
        try KeySourceChoice(keyFile: keyFile, keyDescriptor: keyDescriptor).resolve(
            target, credentialsDirectory: environment["CREDENTIALS_DIRECTORY"],
            standardInputIsTerminal: isatty(STDIN_FILENO) != 0)
    }
}
