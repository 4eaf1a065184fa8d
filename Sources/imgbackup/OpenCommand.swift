import ArgumentParser
import ImgBackupCore

struct OpenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "open",
        abstract: "Bring the image up and print its mount point; it stays up until 'close'.")

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Option(help: "Transport to the remote: sshfs or nbd (default: the target's 'transport').")
    var transport: String?

    @Flag(help: "Open dm-crypt with discards allowed (for fstrim).")
    var discard = false

    @Flag(
        help: ArgumentHelp(
            "Mount without checking the filesystem after an unclean session (to check it by hand).",
            discussion:
                "After a hang or a forced close, open runs e2fsck -f -p (btrfs: btrfs check --readonly) before mounting."
        ))
    var skipCheck = false

    @Flag(
        help:
            "Take the remote lock even if another machine's or target's lock file is there (when that holder is gone for good)."
    )
    var breakLock = false

    @Flag(
        help: ArgumentHelp(
            "Accept an image older than the one this machine last opened, after restoring an older copy on purpose.",
            discussion:
                "Every open checks the generation marker inside the image against this machine's record, so a backup host that serves an old copy is refused."
        ))
    var acceptRollback = false

    @Flag(
        help: ArgumentHelp(
            "Open without changing one byte of the remote: to browse or restore.",
            discussion:
                "Every layer is read-only, no lock is written (one someone else holds is refused), the filesystem's journal is not replayed and no check runs. A scheduled run of the target waits for 'close' (it exits 4)."
        ))
    var readOnly = false

    func run() async throws {
        let config = try global.load()
        var resolved = try global.target(target, in: config, keys: keys)
        if let transport {
            guard let parsed = Target.Transport(rawValue: transport), parsed != .s3 else {
                throw ImgBackupError(.usage, "--transport '\(transport)' is not one of sshfs, nbd")
            }
            guard resolved.transport != .s3 else {
                throw ImgBackupError(
                    .usage, "--transport \(transport) does not apply to '\(resolved.name)': its image is in S3")
            }
            resolved.transport = parsed
        }
        let mountPoint = try await OpenOperation(
            target: resolved, environment: global.environment(config), allowDiscards: discard, skipCheck: skipCheck,
            breakLock: breakLock, acceptRollback: acceptRollback, readOnly: readOnly
        ).run()
        print(mountPoint)
    }
}
