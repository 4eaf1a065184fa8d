import Foundation
import ImgBackupOS
import Logging

/// One way of filling the image: rsync snapshots, a borg repository, btrfs
/// send/receive, or a user's command. A new method is one file with a type
/// that conforms, and a case in ``CopyMethods/make(_:)``.
public protocol CopyMethod: Sendable {
    /// Copies the sources into the mounted image, making one backup point
    /// named for the run's time.
    func copy(_ context: CopyContext) async throws(ImgBackupError) -> CopyOutcome
    /// Deletes the backup points `policy` does not keep; returns their names.
    func prune(_ context: CopyContext, policy: RetentionPolicy) async throws(ImgBackupError) -> [String]
    /// The backup points in the mounted image, oldest first. Reads only.
    func points(_ context: CopyContext) async throws(ImgBackupError) -> [BackupPoint]
    /// Copies `paths` (absolute, as they were on the source; `/` for
    /// everything) of `point` into `directory`, each under its own path
    /// there, as the method kept them: owners, modes, links, ACLs, xattrs.
    func restore(_ context: CopyContext, point: BackupPoint, paths: [String], into directory: String)
        async throws(ImgBackupError)
    /// The method's own check of what it keeps, reading only; nil where it
    /// has none beyond reading the files back (`check` does that).
    func verify(_ context: CopyContext) async throws(ImgBackupError) -> Verdict?
}

/// What a copy method's own check found.
public struct Verdict: Sendable, Equatable {
    public var clean: Bool
    /// One line: what was checked and what was found.
    public var summary: String
}

extension CopyMethod {
    public func verify(_ context: CopyContext) async throws(ImgBackupError) -> Verdict? { nil }
}

/// What a copy step made.
public struct CopyOutcome: Sendable, Equatable {
    /// The backup point (snapshot directory, archive, received snapshot).
    public var point: String?
    /// Bytes the tool says it copied, where it says.
    public var bytesCopied: UInt64?
    /// btrfs-send: whether the send was incremental.
    public var incremental: Bool?

    public init(point: String? = nil, bytesCopied: UInt64? = nil, incremental: Bool? = nil) {
        self.point = point
        self.bytesCopied = bytesCopied
        self.incremental = incremental
    }
}

public enum CopyMethods {
    public static func make(_ method: Target.Copy.Method) -> any CopyMethod {
        switch method {
        case .rsync: RsyncCopy()
        case .borg: BorgCopy()
        case .btrfsSend: BtrfsSendCopy()
        case .command: CommandCopy()
        }
    }
}

/// What a copy method works with.
public struct CopyContext: Sendable {
    public let target: Target
    public let copy: Target.Copy
    /// Where the image's filesystem is mounted.
    public let mountPoint: String
    /// The run's time: names the backup point; injectable for tests.
    public let now: Date
    public let environment: OperationEnvironment
    /// Beats on every piece of output a copy tool prints: progress for the
    /// hang watchdog.
    let heartbeat: OutputHeartbeat
    /// Writes the image's filesystem out to the remote (nil: nothing to vouch for).
    let writeOut: WriteOut?

    init(
        target: Target, copy: Target.Copy, mountPoint: String, now: Date, environment: OperationEnvironment,
        heartbeat: OutputHeartbeat = OutputHeartbeat(), writeOut: WriteOut? = nil
    ) {
        self.target = target
        self.copy = copy
        self.mountPoint = mountPoint
        self.now = now
        self.environment = environment
        self.heartbeat = heartbeat
        self.writeOut = writeOut
    }

    /// What the copy wrote reaches the remote before a backup point gets its
    /// name: a name must never stand for data that did not arrive.
    func writeOutBeforePublishing() async throws(ImgBackupError) {
        try await writeOut?.flush()
    }

    /// A copy step has no wall-clock limit: a large first backup takes hours.
    /// A stalled one is the hang watchdog's business, not a timeout's.
    static let stepLimit: Duration = .seconds(7 * 24 * 3600)
    /// Short housekeeping commands (mkdir-like btrfs calls, borg list).
    static let housekeepingLimit: Duration = .seconds(3600)

    var logger: Logger { environment.logger }

    /// Where the source hosts are mounted (`RUNTIME/TARGET/sources`).
    var sourcesDirectory: String { environment.paths.sourcesDirectory(target.name) }
    var pullsFromOtherHosts: Bool { !copy.sourceHosts.isEmpty }

    /// The sources as paths the copy tool can read: a local path as it is;
    /// a pulled one inside its host's read-only mount. `rooted`: for rsync
    /// --relative, `SOURCES/./HOST/path`, which lands as `HOST/path` in the
    /// backup point; otherwise `HOST/path`, relative to the sources
    /// directory (borg runs there and archives `HOST/path`).
    func sourcePaths(rooted: Bool) -> [String] {
        copy.parsedSources.map { source in
            switch source {
            case .local(let path): return path
            case .remote(let host, let path):
                return (rooted ? "\(sourcesDirectory)/./" : "") + host.directoryName + path
            }
        }
    }

    /// The exclude patterns, each anchored one (`/home/*/.cache`) also under
    /// every source host's directory, so it means the same for pulled trees.
    var excludePatterns: [String] {
        copy.exclude.flatMap { pattern in
            pattern.hasPrefix("/") ? [pattern] + copy.sourceHosts.map { "/\($0.directoryName)\(pattern)" } : [pattern]
        }
    }
    var pointName: String { BackupPointName.make(now) }

    /// imgbackup's own mounts, as absolute paths a copy tool leaves out
    /// whatever the sources: the runtime directory (remote directories,
    /// source hosts, NBD bridges), this target's mount point and every
    /// other imgbackup image mounted now. A backup must never contain a
    /// backup, or recurse into the image it is writing.
    var ownMounts: [String] { Self.imgbackupMounts(paths: environment.paths, mountPoint: mountPoint) }

    /// The runtime directory, `mountPoint` and every imgbackup image mounted
    /// now (also where `restore` refuses to write).
    static func imgbackupMounts(paths: RuntimePaths, mountPoint: String) -> [String] {
        let mapped = MountTable.entries()
            .filter { $0.source.hasPrefix("/dev/mapper/\(Target.mappingPrefix)") }
            .map(\.mountPoint)
        var seen = Set<String>()
        return ([paths.runtimeDirectory, mountPoint] + mapped).filter { seen.insert($0).inserted }
    }

    /// Runs a tool, showing its progress lines (as `parse` reads them) on the
    /// terminal while it runs.
    func run(_ command: Command, progress parse: (@Sendable (String) -> String?)? = nil) async throws(ImgBackupError)
        -> CommandResult
    {
        var command = command
        let display = parse == nil ? nil : environment.progress
        let heartbeat = heartbeat
        command.observer = { output in
            heartbeat.beat()
            guard let parse else { return }
            // Progress lines end in \r (rsync, borg) or \n.
            let lines = output.text.split(whereSeparator: { $0 == "\r" || $0 == "\n" })
            if let line = lines.reversed().lazy.compactMap({ parse(String($0)) }).first {
                heartbeat.note(progress: line)
                display?.update(line)
            }
        }
        defer { if parse != nil { environment.progress?.finish() } }
        do {
            return try await environment.runner.run(command)
        } catch {
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "run \(command.executable)")
        }
    }

    /// Runs a housekeeping command and fails the copy step when it fails.
    func runChecked(_ command: Command, _ purpose: String) async throws(ImgBackupError) -> CommandResult {
        let result = try await run(command)
        guard result.succeeded else {
            throw ImgBackupError(.copyFailed, "failed to \(purpose): \(result.failureSummary)")
        }
        return result
    }

    /// Deletes the backup points in `directory` that `policy` does not keep,
    /// each with `deleteCommand(path)`; returns their names. For methods whose
    /// points are entries of a directory (rsync snapshots, received btrfs
    /// snapshots).
    func prune(
        in directory: String, policy: RetentionPolicy, what: String, deleteCommand: (String) -> Command
    ) async throws(ImgBackupError) -> [String] {
        let points = backupPoints(in: directory)
        let pruned = Set(policy.pruned(points.map(\.date)))
        var removed: [String] = []
        for point in points where pruned.contains(point.date) {
            _ = try await runChecked(deleteCommand("\(directory)/\(point.name)"), "delete the \(what) \(point.name)")
            removed.append(point.name)
        }
        return removed
    }

    /// Names in `directory` that are backup points, with their times.
    func backupPoints(in directory: String) -> [(name: String, date: Date)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name in BackupPointName.parse(name).map { (name, $0) } }.sorted { $0.date < $1.date }
    }
}
