import ArgumentParser
import Foundation
import ImgBackupCore
import ImgBackupOS
import Logging

/// Options every subcommand takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Configuration file.", valueName: "FILE"))
    var config: String?

    @Flag(name: .shortAndLong, help: "Say what is happening (twice for debug detail).")
    var verbose: Int

    @Flag(name: .shortAndLong, help: "Print errors only: no notices, no summary line.")
    var quiet = false

    /// A command's summary line on stdout, unless --quiet.
    func say(_ line: String) {
        if !quiet { print(line) }
    }

    /// The config file this command reads.
    var configPath: String {
        ConfigLoader.resolvePath(explicit: config, environment: ProcessInfo.processInfo.environment)
    }

    /// The documented command line is `imgbackup [--config FILE] COMMAND ...`:
    /// global options may come before the subcommand. argument-parser reads
    /// options per subcommand, so move leading ones to just after it.
    /// Subcommands that only hold subcommands.
    static let commandGroups: Set<String> = ["key"]

    static func movingLeadingGlobals(_ arguments: [String]) -> [String] {
        var globals: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--config", index + 1 < arguments.count {
                globals += [argument, arguments[index + 1]]
                index += 2
            } else if argument.hasPrefix("--config=") || argument == "--verbose" || argument == "--quiet"
                || argument == "-q"
                || (argument.hasPrefix("-v") && argument.dropFirst().allSatisfy { $0 == "v" })
            {
                globals.append(argument)
                index += 1
            } else {
                break
            }
        }
        guard !globals.isEmpty, index < arguments.count else { return arguments }
        // A command group (`key add`): the options belong to the leaf.
        var command = [arguments[index]]
        if commandGroups.contains(arguments[index]), index + 1 < arguments.count, !arguments[index + 1].hasPrefix("-") {
            command.append(arguments[index + 1])
        }
        return command + globals + arguments[(index + command.count)...]
    }

    /// Sets up logging and loads the configuration.
    func load() throws(ImgBackupError) -> Configuration {
        Terminal.bootstrapLogging(verbosity: quiet ? -1 : verbose)
        return try ConfigLoader.load(path: configPath)
    }

    func environment(_ config: Configuration) -> OperationEnvironment {
        var environment = OperationEnvironment(
            paths: RuntimePaths.fromEnvironment(ProcessInfo.processInfo.environment),
            logger: Logger(label: "imgbackup"),
            progress: Terminal.progressDisplay(),
            configPath: config.path)
        environment.processEnvironment = ProcessInfo.processInfo.environment
        environment.metricsDirectory = config.metricsDirectory ?? environment.paths.metricsDirectory
        // Tests see a journal line without waiting a minute.
        if let seconds = ProcessInfo.processInfo.environment["IMGBACKUP_PROGRESS_INTERVAL"].flatMap(Int.init),
            seconds > 0
        {
            environment.journalProgressInterval = .seconds(seconds)
        }
        if quiet { environment.journalProgressInterval = nil }
        return environment
    }

    /// The named target, its key source resolved from `keys`.
    func target(_ name: String, in config: Configuration, keys: KeyOptions) throws(ImgBackupError) -> Target {
        try keys.resolve(try config.target(named: name), environment: ProcessInfo.processInfo.environment)
    }
}
