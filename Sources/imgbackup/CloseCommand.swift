import ArgumentParser
import ImgBackupCore
import Logging

struct CloseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "close",
        abstract: "Tear the image down (idempotent; also cleans up after a crash).")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Flag(help: "Detach busy mounts lazily and defer removal of a busy mapping.")
    var force = false

    func run() async throws {
        let config = try global.load()
        let environment = global.environment(config)
        let outcome = try await CloseOperation(
            target: try config.target(named: target), environment: environment, force: force
        ).run()
        switch outcome {
        case .closed: environment.logger.info("closed '\(target)'")
        case .wasNotOpen: environment.logger.info("'\(target)' was not open")
        }
    }
}
