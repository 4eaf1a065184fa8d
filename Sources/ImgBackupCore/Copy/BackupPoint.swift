import Foundation
import ImgBackupOS

/// One backup point in an image, as `list` shows it and `restore` picks it:
/// an rsync snapshot, a borg archive, a received btrfs snapshot.
public struct BackupPoint: Codable, Sendable, Equatable {
    /// The name, as the copy method keeps it: `2026-03-01T030000Z`.
    public var name: String
    /// Where it is in the image: `snapshots/NAME`, `borg::NAME`.
    public var location: String
    /// The run's time, from the name (a point a person made by hand: its mtime).
    public var time: Date?
    /// False for what a run did not finish: rsync's `.incomplete`, a borg
    /// checkpoint, a btrfs receive that never became read-only.
    public var complete: Bool
    /// What the run that made it copied, from this machine's run history
    /// (rsync: bytes transferred; borg: the archive's size). Absent for a
    /// point another machine made.
    public var bytesCopied: UInt64?

    public init(name: String, location: String, time: Date?, complete: Bool, bytesCopied: UInt64? = nil) {
        self.name = name
        self.location = location
        self.time = time
        self.complete = complete
        self.bytesCopied = bytesCopied
    }

    /// `list --json`: {"target": ..., "method": ..., "points": [...]}, times in ISO 8601.
    public static func json(_ points: [BackupPoint], of target: Target) throws -> String {
        struct Listing: Encodable {
            let target: String
            let method: String
            let points: [BackupPoint]
        }
        let encoder = RunHistory.encoder()
        encoder.outputFormatting.insert(.prettyPrinted)
        let listing = Listing(target: target.name, method: target.copy?.method.rawValue ?? "", points: points)
        return String(decoding: try encoder.encode(listing), as: UTF8.self)
    }

    /// `POINT` on the command line: a name, or `latest` (the newest complete one).
    static func pick(_ wanted: String?, from points: [BackupPoint], target: String) throws(ImgBackupError)
        -> BackupPoint
    {
        let complete = points.filter(\.complete)
        if wanted == nil || wanted == "latest" {
            guard let latest = complete.last else {
                throw ImgBackupError(
                    .usage, "target '\(target)' has no complete backup point to restore from",
                    hint: "'imgbackup list \(target)' shows what the image holds")
            }
            return latest
        }
        guard let point = points.first(where: { $0.name == wanted }) else {
            throw ImgBackupError(
                .usage, "target '\(target)' has no backup point '\(wanted ?? "")'",
                hint: "'imgbackup list \(target)' names them")
        }
        return point
    }

    /// Paths as they were on the source: absolute, no `..`, no empty part.
    static func checkedSourcePaths(_ paths: [String]) throws(ImgBackupError) -> [String] {
        try paths.map { (path: String) throws(ImgBackupError) -> String in
            let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            guard path.hasPrefix("/"), !parts.contains(".."), !parts.contains(".") else {
                throw ImgBackupError(
                    .usage, "restore: '\(path)' is not an absolute path as it was on the source",
                    hint:
                        "name what to restore as it was backed up, e.g. /etc/ssh or /home/alice/notes.txt; / for everything"
                )
            }
            let trimmed = parts.filter { !$0.isEmpty }.joined(separator: "/")
            return "/" + trimmed
        }
    }
}

extension CopyContext {
    /// Each point's `bytesCopied`, from this machine's run history.
    func withRunHistory(_ points: [BackupPoint]) -> [BackupPoint] {
        let runs = RunHistory(paths: environment.paths).records(target.name)
        var copied: [String: UInt64] = [:]
        for run in runs where run.result == .success {
            if let point = run.point, let bytes = run.bytesCopied { copied[point] = bytes }
        }
        return points.map { point in
            var point = point
            point.bytesCopied = copied[point.location]
            return point
        }
    }

    /// The entries of `directory` that are backup points, named by their
    /// runs, each `complete` as `isComplete` says.
    func directoryPoints(_ directory: String, prefix: String, isComplete: (String) -> Bool) -> [BackupPoint] {
        backupPoints(in: directory).map { point in
            BackupPoint(
                name: point.name, location: "\(prefix)/\(point.name)", time: point.date,
                complete: isComplete(point.name))
        }
    }

    /// rsync of `paths` (absolute, as on the source) from the tree at
    /// `root` into `directory`, each under its own path there
    /// (`--relative` from the `/./` anchor): owners by number, modes, hard
    /// links, ACLs, xattrs, symlinks as they were.
    func rsyncOut(from root: String, paths: [String], into directory: String, what: String)
        async throws(ImgBackupError)
    {
        var sources: [String] = []
        for path in paths {
            let inside = "\(root)\(path == "/" ? "" : path)"
            // A directory on the way that is a symlink in the backup
            // (/var/run -> /run) would be followed out of the snapshot,
            // into this machine's own files: refused, not restored wrongly.
            var prefix = root
            for part in path.split(separator: "/").dropLast() {
                prefix += "/\(part)"
                var info = stat()
                if lstat(prefix, &info) == 0, info.st_mode & S_IFMT == S_IFLNK {
                    let through = String(prefix.dropFirst(root.count))
                    throw ImgBackupError(
                        .usage, "restore: \(path) goes through \(through), a symbolic link in \(what)",
                        hint: "restore \(through) itself (the link), or the path it points to by its own name")
                }
            }
            var info = stat()
            guard lstat(inside, &info) == 0 else {
                throw ImgBackupError(
                    .usage, "restore: \(path) is not in \(what)",
                    hint: "'imgbackup open --read-only \(target.name)' to look around in it")
            }
            sources.append(path == "/" ? "\(root)/./" : "\(root)/.\(path)")
        }
        let arguments =
            ["-aHAX", "--numeric-ids", "--relative", "--info=progress2,stats2", "--no-human-readable"] + sources
            + [directory + "/"]
        let result = try await run(
            Command("rsync", arguments, timeout: CopyContext.stepLimit, outputLimit: 256 * 1024),
            progress: RsyncCopy.progressLine)
        guard result.succeeded else {
            throw ImgBackupError(.copyFailed, "failed to restore from \(what): \(result.failureSummary)")
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
