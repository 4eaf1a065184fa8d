import Foundation
import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// btrfs send/receive from a local subvolume into a btrfs image: a read-only
/// snapshot of `source_subvolume` (between the optional quiesce and resume
/// commands), sent incrementally against the previous one when both sides
/// still have it, else in full, and received into `snapshots/` in the image.
///
/// Local snapshots live in `snapshot_directory/TARGET/` (default
/// `.imgbackup-snapshots` beside the source); only the newest, the next
/// run's parent, is kept. The parent's name is recorded in the state
/// directory. Received snapshots are pruned by the target's retention.
struct BtrfsSendCopy: CopyMethod {
    static let snapshotsDirectory = "snapshots"

    func copy(_ context: CopyContext) async throws(ImgBackupError) -> CopyOutcome {
        guard let source = context.copy.sourceSubvolume else {
            throw ImgBackupError(.config, "btrfs-send needs source_subvolume")
        }
        let name = context.pointName
        let local = localDirectory(context)
        let received = "\(context.mountPoint)/\(Self.snapshotsDirectory)"
        do {
            try LocalFiles.makeDirectories(local)
            try LocalFiles.makeDirectories(received)
        } catch {
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "create the snapshot directories")
        }
        guard !FileManager.default.fileExists(atPath: "\(received)/\(name)"),
            !FileManager.default.fileExists(atPath: "\(local)/\(name)")
        else {
            throw ImgBackupError(
                .copyFailed, "failed to copy: the snapshot \(name) already exists",
                hint: "runs are named by the second they start: wait a second and run again")
        }

        try await takeSnapshot(of: source, at: "\(local)/\(name)", context)
        let parent = usableParent(context, local: local, received: received)
        context.logger.info(
            "btrfs send \(name)\(parent.map { " incrementally against \($0)" } ?? " in full") into \(Self.snapshotsDirectory)/"
        )
        do {
            try await sendAndReceive(
                "\(local)/\(name)", parent: parent.map { "\(local)/\($0)" }, into: received, context)
        } catch {
            // Neither half is any use: a receive that did not finish, a local
            // snapshot the image never got. The parent stays for next time.
            await deleteSubvolume("\(received)/\(name)", context)
            await deleteSubvolume("\(local)/\(name)", context)
            throw error
        }
        do {
            try LocalFiles.writeAtomically(parentRecord(context), name + "\n")
        } catch {
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "record the btrfs parent snapshot")
        }
        // Older local snapshots are no parent any more.
        for point in context.backupPoints(in: local) where point.name != name {
            await deleteSubvolume("\(local)/\(point.name)", context)
        }
        return CopyOutcome(point: "\(Self.snapshotsDirectory)/\(name)", incremental: parent != nil)
    }

    /// A received snapshot is complete once `btrfs receive` made it
    /// read-only with its received UUID; a receive killed midway leaves a
    /// writable subvolume without one.
    func points(_ context: CopyContext) async throws(ImgBackupError) -> [BackupPoint] {
        let listing = try await context.runChecked(
            Command(
                "btrfs", ["subvolume", "list", "-r", "-R", context.mountPoint], timeout: CopyContext.housekeepingLimit),
            "list the received snapshots")
        let received = Self.receivedPaths(listing.standardOutput)
        return context.directoryPoints(
            "\(context.mountPoint)/\(Self.snapshotsDirectory)", prefix: Self.snapshotsDirectory
        ) { name in received.contains("\(Self.snapshotsDirectory)/\(name)") }
    }

    /// "ID 258 gen 8 top level 5 received_uuid 4550a99b-... path snapshots/NAME": the
    /// paths of read-only subvolumes with a received UUID.
    static func receivedPaths(_ listing: String) -> Set<String> {
        var paths = Set<String>()
        for line in listing.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let uuid = fields.firstIndex(of: "received_uuid"), uuid + 1 < fields.count, fields[uuid + 1] != "-",
                let path = line.range(of: " path ")
            else { continue }
            paths.insert(String(line[path.upperBound...]))
        }
        return paths
    }

    /// A received snapshot holds the source subvolume's tree: a path as it
    /// was on the source (`/srv/data/x`, under `source_subvolume`
    /// /srv/data) is `x` in it, and comes back as DIRECTORY/srv/data/x.
    func restore(_ context: CopyContext, point: BackupPoint, paths: [String], into directory: String)
        async throws(ImgBackupError)
    {
        let subvolume = (context.copy.sourceSubvolume ?? "/").split(separator: "/").joined(separator: "/")
        let prefix = subvolume.isEmpty ? "" : "/" + subvolume
        let inside = try paths.map { (path: String) throws(ImgBackupError) -> String in
            if prefix.isEmpty || path == prefix { return "/" }
            guard path.hasPrefix(prefix + "/") else {
                throw ImgBackupError(
                    .usage, "restore: \(path) is not under the subvolume this target backs up (\(prefix))",
                    hint: "name paths under \(prefix), or \(prefix) for all of it")
            }
            return String(path.dropFirst(prefix.count))
        }
        let destination = directory + prefix
        do {
            try LocalFiles.makeDirectories(destination)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create \(destination)")
        }
        try await context.rsyncOut(
            from: "\(context.mountPoint)/\(point.location)", paths: inside, into: destination, what: point.location)
    }

    func prune(_ context: CopyContext, policy: RetentionPolicy) async throws(ImgBackupError) -> [String] {
        try await context.prune(
            in: "\(context.mountPoint)/\(Self.snapshotsDirectory)", policy: policy, what: "received snapshot"
        ) { path in
            Command("btrfs", ["subvolume", "delete", path], timeout: CopyContext.housekeepingLimit)
        }
    }

    private func localDirectory(_ context: CopyContext) -> String {
        let base =
            context.copy.snapshotDirectory
            ?? ((context.copy.sourceSubvolume ?? "/") as NSString).deletingLastPathComponent + "/.imgbackup-snapshots"
        return "\(base)/\(context.target.name)"
    }

    private func parentRecord(_ context: CopyContext) -> String {
        context.environment.paths.btrfsParent(context.target.name)
    }

    /// The recorded parent, if the local snapshot and the received copy both
    /// still exist: an incremental send needs the parent on both sides.
    private func usableParent(_ context: CopyContext, local: String, received: String) -> String? {
        guard
            let recorded = LocalFiles.contents(parentRecord(context))?.trimmingCharacters(in: .whitespacesAndNewlines),
            BackupPointName.parse(recorded) != nil
        else { return nil }
        let both =
            FileManager.default.fileExists(atPath: "\(local)/\(recorded)")
            && FileManager.default.fileExists(atPath: "\(received)/\(recorded)")
        if !both { context.logger.notice("the parent snapshot \(recorded) is gone on one side: sending in full") }
        return both ? recorded : nil
    }

    private func takeSnapshot(of source: String, at path: String, _ context: CopyContext) async throws(ImgBackupError) {
        if let quiesce = context.copy.quiesceCommand {
            let result = try await context.run(
                Command(quiesce[0], Array(quiesce.dropFirst()), timeout: CopyContext.housekeepingLimit))
            guard result.succeeded else {
                // Quiesce may have half-happened: resume anyway.
                await resume(context)
                throw ImgBackupError(.copyFailed, "the quiesce command failed: \(result.failureSummary)")
            }
        }
        var failure: ImgBackupError?
        do {
            _ = try await context.runChecked(
                Command(
                    "btrfs", ["subvolume", "snapshot", "-r", source, path], timeout: CopyContext.housekeepingLimit),
                "snapshot \(source)")
        } catch {
            failure = error
        }
        if context.copy.quiesceCommand != nil { await resume(context) }
        if let failure { throw failure }
    }

    private func resume(_ context: CopyContext) async {
        guard let resume = context.copy.resumeCommand else { return }
        let result = try? await context.run(
            Command(resume[0], Array(resume.dropFirst()), timeout: CopyContext.housekeepingLimit))
        if result?.succeeded != true {
            context.logger.error(
                "the resume command failed: \(result?.failureSummary ?? "it did not run"); start what quiesce stopped by hand"
            )
        }
    }

    /// btrfs send [-p PARENT] SNAPSHOT | btrfs receive DIRECTORY, through a pipe.
    private func sendAndReceive(_ snapshot: String, parent: String?, into directory: String, _ context: CopyContext)
        async throws(ImgBackupError)
    {
        // Both ends must start: a missing tool found only after one side runs
        // would leave the other waiting on the pipe.
        do {
            _ = try ExecutableLocator.locate("btrfs")
        } catch {
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "send the snapshot")
        }
        let pipe: (read: Int32, write: Int32)
        do {
            pipe = try CommandPipe.make()
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "connect btrfs send to btrfs receive")
        }
        var send = Command(
            "btrfs", ["send"] + (parent.map { ["-p", $0] } ?? []) + [snapshot], timeout: CopyContext.stepLimit)
        send.outputDescriptor = pipe.write
        var receive = Command("btrfs", ["receive", directory], timeout: CopyContext.stepLimit)
        receive.input = .descriptor(pipe.read)
        let runner = context.environment.runner
        async let sent = Self.outcome { try await runner.run(send) }
        async let received = Self.outcome { try await runner.run(receive) }
        let (sendResult, receiveResult) = await (sent, received)
        for (what, result) in [("btrfs send", sendResult), ("btrfs receive", receiveResult)] {
            switch result {
            case .failure(let error):
                throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "run \(what)")
            case .success(let result) where !result.succeeded:
                throw ImgBackupError(.copyFailed, "the copy step failed: \(what): \(result.failureSummary)")
            case .success: break
            }
        }
    }

    private static func outcome(_ body: () async throws -> CommandResult) async -> Result<CommandResult, any Error> {
        do { return .success(try await body()) } catch { return .failure(error) }
    }

    private func deleteSubvolume(_ path: String, _ context: CopyContext) async {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let result = try? await context.run(
            Command("btrfs", ["subvolume", "delete", path], timeout: CopyContext.housekeepingLimit))
        if result?.succeeded != true {
            context.logger.error(
                "could not delete the subvolume \(path): \(result?.failureSummary ?? "btrfs did not run")")
        }
    }
}
