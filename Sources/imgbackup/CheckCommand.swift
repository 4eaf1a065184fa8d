import ArgumentParser
import ImgBackupCore

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Read the whole image back and verify it: the filesystem, every file, the copy method's own check.",
        discussion: """
            Reads only (a closed target is opened read-only and closed again). Runs the \
            filesystem's read-only check (e2fsck -fn; btrfs check --readonly), reads every \
            file once (btrfs answers a damaged data block with an I/O error, and the file is \
            named; ext4 has no data checksums), and for borg 'borg check --verify-data'. \
            Exits 10 when anything is damaged. It reads every stored byte over the network: \
            schedule it monthly (imgbackup-check@.timer), not daily.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    func run() async throws {
        let config = try global.load()
        let resolved = try global.target(target, in: config, keys: keys)
        let report = try await CheckOperation(target: resolved, environment: global.environment(config)).run()
        for step in report.steps { global.say("check: \(step.escapingControlCharacters)") }
        // Names from inside the image, one per line for scripts and people.
        for file in report.unreadable { print("unreadable: \(file.escapingControlCharacters)") }
        if let damage = report.damageError(target: resolved.name) { throw damage }
        global.say("check: '\(resolved.name)' is intact as far as these checks can tell")
    }
}
