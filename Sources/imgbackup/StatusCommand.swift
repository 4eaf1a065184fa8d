import ArgumentParser
import ImgBackupCore

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show each target's layers, lock, last run and image size.",
        discussion: """
            Reads the state record, the mount table and device-mapper, the run history and \
            the last trim's measurement; takes no lock and changes nothing, so it is safe \
            while a run is going. Image sizes are read live while the target is open (the \
            allocated size only over NBD), else as the last trim measured them. Exits 0 \
            whatever the targets' state; --json for scripts (docs/usage.md).
            """)

    @OptionGroup var global: GlobalOptions

    @Flag(help: "Print JSON: {\"targets\": [...]}.")
    var json = false

    @Argument(help: "The target, a [target.NAME] table of the config (default: every target).")
    var target: String?

    func run() async throws {
        let config = try global.load()
        let environment = global.environment(config)
        let targets = try target.map { [try config.target(named: $0)] } ?? config.targets
        var statuses: [TargetStatus] = []
        for target in targets {
            statuses.append(try await StatusOperation(target: target, environment: environment).run())
        }
        if json {
            print(try TargetStatus.json(statuses))
        } else {
            // Lock holders and names come from the remote: each line escaped.
            let lines = statuses.map { $0.text() }.joined(separator: "\n\n").split(
                separator: "\n", omittingEmptySubsequences: false)
            print(lines.map { String($0).escapingControlCharacters }.joined(separator: "\n"))
        }
    }
}
