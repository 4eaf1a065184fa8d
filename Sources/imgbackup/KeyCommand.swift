import ArgumentParser
import Foundation
import ImgBackupCore
import ImgBackupOS
import Logging

struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key",
        abstract: "Add or remove a key of the target's image (LUKS keyslots).",
        subcommands: [KeyAddCommand.self, KeyRemoveCommand.self])
}

struct KeyAddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a second key (e.g. an offline recovery key), unlocked by the target's key.",
        discussion: """
            The target's key comes from its config (key_file, key_command), a systemd \
            credential, or --key-file/--key-fd; the new key from --new-key-file or \
            --new-key-fd. Both are read into memory only. Works whether the target is \
            open or not.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Option(
        help: ArgumentHelp(
            "The key to add: a file readable only by its owner, or '-' for standard input.", valueName: "FILE"))
    var newKeyFile: String?

    @Option(
        name: .customLong("new-key-fd"),
        help: ArgumentHelp("Read the key to add from the open file descriptor N.", valueName: "N"))
    var newKeyDescriptor: Int32?

    func validate() throws {
        if (newKeyFile == nil) == (newKeyDescriptor == nil) {
            throw ValidationError("give the key to add with --new-key-file FILE or --new-key-fd N")
        }
        if (newKeyFile == "-" || newKeyDescriptor == 0) && keys.readsStandardInput {
            throw ValidationError("only one key can come from standard input")
        }
        if let newKeyDescriptor, newKeyDescriptor < 0 || newKeyDescriptor == 1 || newKeyDescriptor == 2 {
            throw ValidationError(
                "--new-key-fd \(newKeyDescriptor) is not a descriptor to read a key from (0, or 3 and up)")
        }
    }

    func run() async throws {
        let config = try global.load()
        let environment = global.environment(config)
        let resolved = try global.target(target, in: config, keys: keys)
        var newKeyOptions = KeyOptions()
        newKeyOptions.keyFile = newKeyFile
        newKeyOptions.keyDescriptor = newKeyDescriptor
        let source = try newKeyOptions.resolve(resolved, environment: [:]).key
        let newKey = try await KeyLoader.load(source, target: target, runner: environment.runner)
        let report = try await KeyOperation(target: resolved, environment: environment).run(.add(newKey))
        global.say("\(target): added the key in keyslot \(report.slot); \(report.keysLeft) keys open the image")
    }
}

struct KeyRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove the key given (config, credential, --key-file or --key-fd); never the last one.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    func run() async throws {
        let config = try global.load()
        let environment = global.environment(config)
        let resolved = try global.target(target, in: config, keys: keys)
        let report = try await KeyOperation(target: resolved, environment: environment).run(.remove)
        global.say("\(target): removed the key in keyslot \(report.slot); \(report.keysLeft) keys open the image")
    }
}
