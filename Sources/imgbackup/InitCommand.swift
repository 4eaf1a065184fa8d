import ArgumentParser
import ImgBackupCore

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create the encrypted image on the remote (never overwrites one).",
        discussion: """
            Mounts the remote directory over sshfs, creates a sparse image of the configured \
            size, formats it as LUKS2 with the target's key, makes the filesystem, and closes \
            everything again. The image's LUKS UUID is recorded so that later opens can check \
            they got the right image.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Option(help: ArgumentHelp("Image size, e.g. 50G (overrides 'size' in the config).", valueName: "SIZE"))
    var size: String?

    func run() async throws {
        let config = try global.load()
        var sizeOverride: ByteSize?
        if let size {
            guard let parsed = ByteSize(parsing: size) else {
                throw ImgBackupError(.usage, "--size '\(size)' is not a size (a number with K, M, G or T, e.g. 50G)")
            }
            sizeOverride = parsed
        }
        let operation = try InitOperation(
            target: try global.target(target, in: config, keys: keys), environment: global.environment(config),
            size: sizeOverride)
        let report = try await operation.run()
        global.say("created \(report.image): \(report.size), LUKS2 \(report.luksUUID)")
    }
}
