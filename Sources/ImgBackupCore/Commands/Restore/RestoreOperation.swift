import Foundation
import ImgBackupOS

/// `imgbackup restore`: paths from one backup point (the newest complete
/// one by default) into a local directory, each under its own path there,
/// with what the copy method kept (owners, modes, hard links, symlinks,
/// ACLs, xattrs). Reads the image only.
public struct RestoreOperation {
    public let target: Target
    public let environment: OperationEnvironment
    /// A point's name, `latest`, or nil (latest).
    public let point: String?
    /// As they were on the source: absolute; `/` for everything.
    public let paths: [String]
    public let directory: String

    public init(target: Target, environment: OperationEnvironment, point: String?, paths: [String], directory: String) {
        self.target = target
        self.environment = environment
        self.point = point
        self.paths = paths
        self.directory = directory
    }

    /// Returns the point restored from.
    public func run() async throws(ImgBackupError) -> BackupPoint {
        let paths = try BackupPoint.checkedSourcePaths(self.paths)
        let directory = try usableDirectory()
        let (wanted, name) = (point, target.name)
        return try await ReadOnlySession(target: target, environment: environment, step: "the restore").run {
            (context: CopyContext) async throws(ImgBackupError) -> BackupPoint in
            let method = CopyMethods.make(context.copy.method)
            let point = try BackupPoint.pick(wanted, from: try await method.points(context), target: name)
            if !point.complete {
                context.logger.notice(
                    "\(point.location) is incomplete: a run did not finish it; restoring what it holds")
            }
            context.logger.info("restoring \(paths.joined(separator: " ")) from \(point.location) into \(directory)")
            try await method.restore(context, point: point, paths: paths, into: directory)
            return point
        }
    }

    /// The directory, absolute, created if missing; never inside an image
    /// (the restore would write into a backup) nor in imgbackup's runtime
    /// directory.
    func usableDirectory() throws(ImgBackupError) -> String {
        let absolute =
            directory.hasPrefix("/")
            ? directory : FileManager.default.currentDirectoryPath + "/" + directory
        let normalized = "/" + absolute.split(separator: "/").filter { $0 != "." }.joined(separator: "/")
        let forbidden = CopyContext.imgbackupMounts(paths: environment.paths, mountPoint: target.mountPoint)
        if normalized.split(separator: "/").contains("..")
            || forbidden.contains(where: { normalized == $0 || normalized.hasPrefix($0 + "/") })
        {
            throw ImgBackupError(
                .usage, "restore: refusing --to \(directory): it is inside an image or imgbackup's own directories",
                hint: "restore into a directory of this machine, e.g. /var/tmp/restore")
        }
        do {
            try LocalFiles.makeDirectories(normalized)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create \(normalized)")
        }
        return normalized
    }
}
