import ArgumentParser
import ImgBackupCore

struct ResizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Grow a target's image, its LUKS mapping and its filesystem, online.",
        discussion: """
            Grows the remote image file (sparse), the loop device, the dm-crypt mapping \
            (crypt_resize) and the filesystem (resize2fs; btrfs filesystem resize max), \
            all while mounted. An open target stays open; a closed one is opened over sshfs \
            and closed again. Checks the remote's free space first. Never shrinks. \
            Interrupted, it finishes when run again. Set 'size' in the config to match \
            afterwards (init and doctor read it).
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Option(help: ArgumentHelp("The new image size, e.g. 60G: larger than now.", valueName: "SIZE"))
    var size: String

    func run() async throws {
        guard let newSize = ByteSize(parsing: size) else {
            throw ImgBackupError(.usage, "--size '\(size)' is not a size (a number with K, M, G or T, e.g. 60G)")
        }
        let config = try global.load()
        let resolved = try global.target(target, in: config, keys: keys)
        let report = try await ResizeOperation(target: resolved, environment: global.environment(config), size: newSize)
            .run()
        var line = "\(target): image \(ByteSize.format(report.previousBytes)) -> \(ByteSize.format(report.imageBytes))"
        if let filesystem = report.filesystemBytes {
            line += ", \(resolved.filesystem.rawValue) now \(ByteSize.format(filesystem))"
        }
        line += report.wasOpen ? " (online, still open)" : " (opened and closed again)"
        global.say(line)
        if resolved.size?.bytes != report.imageBytes {
            global.say("set size = \"\(size)\" in [target.\(target)] to match")
        }
    }
}
