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

    /// Sets up logging and loads the configuration.
    func load() throws(ImgBackupError) -> Configuration {
        Terminal.bootstrapLogging(verbosity: verbose)
        let path = ConfigLoader.resolvePath(explicit: config, environment: ProcessInfo.processInfo.environment)
        return try ConfigLoader.load(path: path)
    }

    func environment() -> OperationEnvironment {
        OperationEnvironment(
            paths: RuntimePaths.fromEnvironment(ProcessInfo.processInfo.environment),
            logger: Logger(label: "imgbackup"),
            progress: Terminal.progressDisplay())
    }
}
