import ArgumentParser
import ImgBackupCore

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Copy files out of a backup point into a local directory.",
        usage: "imgbackup restore <target> [<point>] <path> ... --to <directory>",
        discussion: """
            Each PATH is named as it was on the source (absolute; / for everything) and comes \
            back under its own path in DIRECTORY: 'restore offsite /etc/ssh --to /var/tmp/r' \
            writes /var/tmp/r/etc/ssh. POINT is a name from 'imgbackup list' or 'latest' \
            (the default: the newest complete point). Owners (by number), modes, hard links, \
            symlinks, ACLs and xattrs come back as the copy method kept them; files already \
            in DIRECTORY with the same names are replaced. Reads the image only: a closed \
            target is opened read-only for the restore and closed again.
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Argument(
        help: ArgumentHelp("[POINT] PATH...: a backup point (optional), then what to restore.", valueName: "path"))
    var pointAndPaths: [String]

    @Option(
        name: .customLong("to"), help: ArgumentHelp("Where to restore to (created if missing).", valueName: "directory")
    )
    var directory: String

    func validate() throws {
        guard !Self.split(pointAndPaths).paths.isEmpty else {
            throw ValidationError("name at least one PATH to restore, as it was on the source (/ for everything)")
        }
    }

    /// A first argument that is not an absolute path is the point.
    static func split(_ arguments: [String]) -> (point: String?, paths: [String]) {
        guard let first = arguments.first, !first.hasPrefix("/") else { return (nil, arguments) }
        return (first, Array(arguments.dropFirst()))
    }

    func run() async throws {
        let config = try global.load()
        let resolved = try global.target(target, in: config, keys: keys)
        let (point, paths) = Self.split(pointAndPaths)
        let restored = try await RestoreOperation(
            target: resolved, environment: global.environment(config), point: point, paths: paths,
            directory: directory
        ).run()
        global.say(
            "restored \(paths.joined(separator: " ")) from \(restored.location.escapingControlCharacters) into \(directory)"
        )
    }
}
