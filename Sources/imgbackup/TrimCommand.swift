import ArgumentParser
import ImgBackupCore

struct TrimCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trim",
        abstract: "Give unused space back to the remote: open over NBD with discards, fstrim, close.",
        discussion: """
            SFTP cannot discard, so an image used over sshfs only grows. trim opens it over \
            the target's [nbd] export with discards allowed, runs fstrim, and closes. It \
            reports what fstrim freed and the remote image's allocated size before and after.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    func run() async throws {
        let config = try global.load()
        let report = try await TrimOperation(
            target: try global.target(target, in: config, keys: keys), environment: global.environment(config)
        ).run()
        let format = { (bytes: UInt64?) in bytes.map { "\(ByteSize.format($0)) (\($0) bytes)" } ?? "unknown" }
        global.say("trimmed: \(format(report.trimmedBytes))")
        global.say("remote allocated before: \(format(report.allocatedBefore))")
        global.say("remote allocated after: \(format(report.allocatedAfter))")
        if let before = report.allocatedBefore, let after = report.allocatedAfter, before >= after {
            global.say("given back: \(format(before - after))")
        }
    }
}
