import Foundation
import ImgBackupOS

/// rsync into dated snapshot directories, `snapshots/2026-11-22T031500Z`, each
/// hard-linked against the previous one (`--link-dest`): unchanged files cost
/// one directory entry, so keeping many daily, weekly and monthly points is
/// cheap. `snapshots/latest` points at the newest.
struct RsyncCopy: CopyMethod {
    static let snapshotsDirectory = "snapshots"
    /// Where a snapshot is built. A failed run leaves it; the next run
    /// continues in it, so what was copied is not copied again.
    static let incompleteName = ".incomplete"
    static let latestLink = "latest"

    func copy(_ context: CopyContext) async throws(ImgBackupError) -> CopyOutcome {
        let snapshots = "\(context.mountPoint)/\(Self.snapshotsDirectory)"
        let name = context.pointName
        let incomplete = "\(snapshots)/\(Self.incompleteName)"
        do {
            try LocalFiles.makeDirectories(snapshots)
        } catch {
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "create \(snapshots)")
        }
        guard !FileManager.default.fileExists(atPath: "\(snapshots)/\(name)") else {
            throw ImgBackupError(
                .copyFailed, "failed to copy: the snapshot \(name) already exists in \(snapshots)",
                hint: "runs are named by the second they start: wait a second and run again")
        }
        let previous = context.backupPoints(in: snapshots).last?.name

        var arguments = [
            // archive, hard links, ACLs, xattrs; owners by number, as on the source
            "-aHAX", "--numeric-ids",
            // the snapshot mirrors the sources: what is gone or excluded there goes here
            "--delete", "--delete-excluded",
            // /etc lands in SNAPSHOT/etc
            "--relative",
            "--info=progress2,stats2", "--no-human-readable",
        ]
        if context.copy.oneFileSystem { arguments.append("--one-file-system") }
        if let previous { arguments.append("--link-dest=\(snapshots)/\(previous)") }
        // With --relative and absolute sources, "/PATH" is anchored at "/".
        arguments += context.ownMounts.map { "--exclude=\($0)" }
        arguments += context.excludePatterns.map { "--exclude=\($0)" }
        arguments += context.sourcePaths(rooted: true)
        arguments.append(incomplete + "/")
        context.logger.info(
            "rsync \(context.copy.sources.joined(separator: " ")) into \(Self.snapshotsDirectory)/\(name)\(previous.map { ", hard-linked against \($0)" } ?? ", a full copy")"
        )

        // rsync looks up every file of the previous snapshot, one directory
        // block at a time: over a distant link a round trip each. Read ahead
        // of it, many at once.
        let prefetch = previous.map { DirectoryPrefetch.start("\(snapshots)/\($0)") }
        let result: CommandResult
        do {
            result = try await context.run(
                Command("rsync", arguments, timeout: CopyContext.stepLimit, outputLimit: 256 * 1024),
                progress: Self.progressLine)
        } catch {
            await Self.finish(prefetch, context)
            throw error
        }
        await Self.finish(prefetch, context)
        switch result.termination {
        case .exited(0): break
        case .exited(24):
            // Files that vanished while rsync ran (logs rotated, caches): the
            // rest is a good snapshot, as every rsync backup treats it.
            context.logger.notice("rsync: some source files vanished during the copy: \(result.outputTail())")
        default:
            throw ImgBackupError(.copyFailed, "the copy step failed: \(result.failureSummary)")
        }

        try await context.writeOutBeforePublishing()
        do {
            try LocalFiles.rename(incomplete, to: "\(snapshots)/\(name)")
            try LocalFiles.replaceSymbolicLink("\(snapshots)/\(Self.latestLink)", pointingTo: name)
        } catch {
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "finish the snapshot \(name)")
        }
        return CopyOutcome(
            point: "\(Self.snapshotsDirectory)/\(name)", bytesCopied: Self.transferredBytes(result.standardOutput))
    }

    func prune(_ context: CopyContext, policy: RetentionPolicy) async throws(ImgBackupError) -> [String] {
        try await context.prune(
            in: "\(context.mountPoint)/\(Self.snapshotsDirectory)", policy: policy, what: "snapshot"
        ) { path in
            Command("rm", ["-rf", "--one-file-system", "--", path], timeout: CopyContext.housekeepingLimit)
        }
    }

    func points(_ context: CopyContext) async throws(ImgBackupError) -> [BackupPoint] {
        let snapshots = "\(context.mountPoint)/\(Self.snapshotsDirectory)"
        var points = context.directoryPoints(snapshots, prefix: Self.snapshotsDirectory) { _ in true }
        // A failed run's snapshot, which the next run continues.
        var info = stat()
        if lstat("\(snapshots)/\(Self.incompleteName)", &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
            points.append(
                BackupPoint(
                    name: Self.incompleteName, location: "\(Self.snapshotsDirectory)/\(Self.incompleteName)",
                    time: Date(timeIntervalSince1970: TimeInterval(info.st_mtim.tv_sec)), complete: false))
        }
        return context.withRunHistory(points)
    }

    func restore(_ context: CopyContext, point: BackupPoint, paths: [String], into directory: String)
        async throws(ImgBackupError)
    {
        try await context.rsyncOut(
            from: "\(context.mountPoint)/\(point.location)", paths: paths, into: directory, what: point.location)
    }

    /// The prefetch's descriptors go before the write-out and the unmount
    /// (an open one would keep the filesystem busy), after a stop signal too.
    /// Each read ends within a round trip; after a hang the watchdog has
    /// aborted the transport, which ends them at once.
    private static func finish(_ prefetch: DirectoryPrefetch?, _ context: CopyContext) async {
        guard let prefetch else { return }
        let deadline = Deadlines(context.target).remoteCall
        _ = await withUncancelledTask { await prefetch.stop(waitingAtMost: deadline) }
    }

    /// "  1,234,567  45%   12.34MB/s    0:00:10 (xfr#3, ir-chk=1000/2000)"
    ///  -> "rsync: 1.2 MiB copied, 12.34MB/s, 45% of what it has seen so far, ETA 0:00:10"
    @Sendable static func progressLine(_ line: String) -> String? {
        let fields = line.split(separator: " ")
        guard fields.count >= 3, fields[1].hasSuffix("%"), let bytes = UInt64(fields[0].filter { $0 != "," }) else {
            return nil
        }
        let eta = fields.count >= 4 && fields[3].contains(":") ? ", ETA \(fields[3])" : ""
        return "rsync: \(ByteSize.format(bytes)) copied, \(fields[2]), \(fields[1]) of what it has seen so far\(eta)"
    }

    /// From --stats: "Total transferred file size: 1234 bytes".
    static func transferredBytes(_ output: String) -> UInt64? {
        for line in output.split(whereSeparator: \.isNewline) where line.hasPrefix("Total transferred file size:") {
            let digits = line.dropFirst("Total transferred file size:".count).prefix { $0 != "b" }.filter(\.isNumber)
            return UInt64(digits)
        }
        return nil
    }
}
