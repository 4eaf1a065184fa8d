import ArgumentParser
import Foundation
import ImgBackupCore

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract:
            "List the backup points in a target's image: rsync snapshots, borg archives, received btrfs snapshots.",
        discussion: """
            Reads only. A closed target is opened read-only for the listing and closed again \
            (nothing on the remote changes); an open one is read where it is mounted. \
            'copied' is what the run that made a point copied, from this machine's run \
            history. --json for scripts (docs/usage.md).
            """)

    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeyOptions

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    @Flag(help: "Print JSON: {\"target\": ..., \"points\": [...]}.")
    var json = false

    func run() async throws {
        let config = try global.load()
        let resolved = try global.target(target, in: config, keys: keys)
        let points = try await ListOperation(target: resolved, environment: global.environment(config)).run()
        if json {
            print(try BackupPoint.json(points, of: resolved))
            return
        }
        guard !points.isEmpty else {
            global.say("target '\(resolved.name)' has no backup points yet")
            return
        }
        let formatter = ISO8601DateFormatter()
        let rows = points.map { point in
            [
                point.name.escapingControlCharacters, point.time.map { formatter.string(from: $0) } ?? "-",
                point.complete ? "complete" : "INCOMPLETE",
                point.bytesCopied.map { "\(ByteSize.format($0)) copied" } ?? "",
            ]
        }
        let widths = (0..<3).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            let padded = (0..<3).map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
            print((padded + [row[3]]).joined(separator: "  ").trimmingCharacters(in: .whitespaces))
        }
    }
}
