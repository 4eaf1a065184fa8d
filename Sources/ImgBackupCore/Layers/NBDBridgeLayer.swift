import Foundation
import ImgBackupOS
import Logging

/// The NBD transport: an `imgbackup nbd-bridge` process (libnbd client plus
/// a one-file FUSE filesystem) started in the background; `close` stops it.
/// The image is then `mountPoint/image`.
public struct NBDBridgeLayer: Layer {
    /// The hidden subcommand the bridge runs as; also how teardown recognises it.
    public static let subcommand = "nbd-bridge"

    public let target: Target
    public let mountPoint: String
    public let configPath: String
    public let logFile: String
    public let requireTrim: Bool
    public let deadline: Duration
    /// Where the bridge keeps the S3 lock's token (this process's paths).
    public var paths = RuntimePaths()
    /// S3 only (NBD exports carry their lock in their command): serve
    /// read-only, break a held lock, or serve a new image of this size.
    public var readOnly = false
    public var breakLock = false
    public var createSize: UInt64?
    /// Where what the bridge said while it came up is passed on (an S3 lock
    /// it replaced, an object size it took from the metadata).
    public var logger: Logger?

    public init(
        target: Target, mountPoint: String, configPath: String, logFile: String, requireTrim: Bool, deadline: Duration
    ) {
        self.target = target
        self.mountPoint = mountPoint
        self.configPath = configPath
        self.logFile = logFile
        self.requireTrim = requireTrim
        self.deadline = deadline
    }

    public var intent: LayerRecord { .nbdBridge(mountPoint: mountPoint, pid: nil) }
    public var imagePath: String { Self.imageFile(mountPoint: mountPoint) }

    /// What `flock --nonblock --verbose` prints on the remote when another
    /// session holds the image: an NBD command wrapped in flock is the NBD
    /// transport's remote lock (the kernel drops it when the session ends,
    /// so it can never go stale). See docs/usage.md, "The remote lock".
    static let remoteLockRefusal = "flock: failed to get lock"

    public func up() async throws -> LayerRecord {
        guard target.nbd != nil || target.transport == .s3 else {
            throw ImgBackupError(
                .config, "target '\(target.name)' has no [target.\(target.name).nbd] table",
                hint: "add command = [\"nbdkit\", ...] or uri = \"nbd://...\" to use the nbd transport")
        }
        do {
            try LocalFiles.makeDirectories(mountPoint)
            try? FileManager.default.removeItem(atPath: logFile)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create \(mountPoint)")
        }
        var arguments = ["--config", configPath, Self.subcommand, target.name, "--mount", mountPoint]
        if requireTrim { arguments.append("--require-trim") }
        if readOnly { arguments.append("--read-only") }
        if breakLock { arguments.append("--break-lock") }
        if let createSize { arguments += ["--create-size", String(createSize)] }
        let environment = SubprocessCommandRunner.minimalEnvironment.merging(
            ["IMGBACKUP_RUNTIME_DIR": paths.runtimeDirectory, "IMGBACKUP_STATE_DIR": paths.stateDirectory]
        ) { $1 }
        let process: DetachedProcess
        do {
            process = try DetachedProcess.spawn(
                executable: DetachedProcess.currentExecutable, arguments: arguments, environment: environment,
                logFile: logFile)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "start the NBD bridge")
        }
        let record = LayerRecord.nbdBridge(mountPoint: mountPoint, pid: process.pid)
        let clock = ContinuousClock()
        let until = clock.now.advanced(by: deadline)
        while clock.now < until {
            if MountTable.mount(at: mountPoint)?.filesystemType == "fuse.\(BridgedImage.subtype)" {
                relayNotices()
                return record
            }
            if let status = process.exitStatusIfEnded() {
                if status == ExitStatus.lockedOrOpen.value {
                    // The S3 lock object is someone else's: the bridge said whose.
                    throw ImgBackupError(.locked, lastLine(of: logFile))
                }
                if status == ExitStatus.usageOrConfig.value {
                    throw ImgBackupError(.config, lastLine(of: logFile))
                }
                if ((try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "").contains(Self.remoteLockRefusal) {
                    throw ImgBackupError(
                        .locked,
                        "the image \(target.image) is in use: another NBD client holds the remote's lock on it",
                        hint: "wait for it to close; the remote releases the lock when that connection ends")
                }
                // The bridge's own error line already says what failed.
                let line = lastLine(of: logFile)
                throw ImgBackupError(
                    .remote,
                    line.hasPrefix("failed to") || line.hasPrefix("the NBD") || target.transport == .s3
                        ? line : "failed to connect to the NBD export: \(line)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        kill(process.pid, SIGKILL)
        throw ImgBackupError(
            .remote, "failed to connect to the NBD export: no answer within \(deadline.secondsText)",
            hint: "check the [nbd] table and that the server is reachable")
    }

    /// The bridge's own notices, from its log, to the user: its stderr is
    /// that file, which nobody reads unless something fails.
    private func relayNotices() {
        guard let logger, let text = try? String(contentsOfFile: logFile, encoding: .utf8) else { return }
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("imgbackup: ") {
            guard !line.hasPrefix("imgbackup: error: ") else { continue }
            logger.notice("\(line.dropFirst("imgbackup: ".count))")
        }
    }

    private func lastLine(of path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let line = text.split(whereSeparator: \.isNewline).last.map(String.init) ?? "the bridge exited"
        return line.hasPrefix("imgbackup: error: ") ? String(line.dropFirst(18)) : line
    }
}

extension NBDBridgeLayer {
    static let kind = "nbd"

    static func describe(mountPoint: String, pid: Int32?) -> String {
        "NBD bridge\(pid.map { " (pid \($0))" } ?? "") at \(mountPoint)"
    }

    static func imageFile(mountPoint: String) -> String { "\(mountPoint)/\(BridgedImage.fileName)" }

    /// The export's allocated bytes on the server, as the bridge reads them
    /// from block status; nil if the server cannot tell, or does not answer
    /// within `deadline`.
    static func allocatedBytes(imageFile: String, deadline: Duration) async -> UInt64? {
        try? await withAbandonableDeadline(deadline, operation: "measure the remote allocation of \(imageFile)") {
            ExtendedAttribute.value(of: imageFile, name: BridgedImage.allocatedAttribute).flatMap { UInt64($0) }
        } ?? nil
    }

    static func isUp(mountPoint: String) -> Bool {
        MountTable.mount(at: mountPoint)?.filesystemType.hasPrefix("fuse") ?? false
    }

    /// Unmounting the bridge's FUSE mount ends its loop; it then flushes and
    /// disconnects from the server and exits. One that does not is stopped.
    static func down(mountPoint: String, pid: Int32?, force: Bool, in context: TeardownContext) async throws {
        if !MountTable.isMountPoint(mountPoint) {
            // A bridge whose command was stopped while it connected (a stop
            // signal, a kill) has no pid on record yet, and would mount
            // after we looked: stop it first.
            let strays = ProcessTable.processes(
                named: (DetachedProcess.currentExecutable as NSString).lastPathComponent, withArgument: mountPoint
            ).filter { DetachedProcess.isRunning(pid: $0, withArgument: subcommand) }
            await context.stopStrays(strays, "the NBD bridge")
        }
        try await context.unmountFUSE(mountPoint, force: force, what: "the NBD bridge")
        if let pid {
            // Forced (after a hang, or close --force): the bridge's last flush
            // waits on the server that stopped answering; do not wait it out.
            let within = force ? min(context.stepDeadline, .seconds(2)) : context.stepDeadline
            try await context.stopLingering("the NBD bridge", within: within) {
                DetachedProcess.isRunning(pid: pid, withArgument: subcommand) ? [pid] : []
            }
        }
        // An S3 bridge runs nbdkit here. After a hang it waits inside a
        // request on the store that stopped answering, and outlives the
        // bridge (--exit-with-parent asks it to stop; it finishes its
        // requests first): stop it, and remove what it read.
        let s3 = NBDKitS3.Files(directory: "\((mountPoint as NSString).deletingLastPathComponent)/s3")
        let servers = ProcessTable.processes(withArgument: s3.wrapper)
        if !servers.isEmpty { await ProcessTable.terminate(servers, grace: .seconds(2)) }
        s3.removeAll()
        LocalFiles.removeDirectoryIfEmpty(mountPoint)
    }
}

/// What the bridge process (the ImgBackupNBDBridge module) serves, as the
/// rest of imgbackup sees it: a FUSE mount holding one file.
public enum BridgedImage {
    public static let fileName = "image"
    /// getxattr on the image returns the export's allocated bytes (decimal).
    public static let allocatedAttribute = "user.imgbackup.allocated"
    /// getxattr on the image reads one sector from the server and answers
    /// "ok": a liveness probe that only the remote can answer.
    public static let pingAttribute = "user.imgbackup.ping"
    /// The FUSE subtype: mounts show as "fuse.imgbackup-nbd".
    public static let subtype = "imgbackup-nbd"
}
