import ImgBackupOS

/// The image's filesystem mounted at the target's mount point, after checking
/// that the device holds the filesystem the target expects.
public struct FilesystemLayer: Layer {
    public let device: String
    public let mountPoint: String
    public let filesystem: Target.Filesystem
    /// Mounted read-only without replaying the journal (`open --read-only`).
    public var readOnly = false
    public let deadline: Duration

    public var intent: LayerRecord { .filesystem(device: device, mountPoint: mountPoint) }

    /// Refuses a mount point something is mounted on, or that holds files
    /// the mount would hide. A missing one is fine (it gets created).
    static func requireUsableMountPoint(_ mountPoint: String) throws(ImgBackupError) {
        if MountTable.isMountPoint(mountPoint) {
            throw ImgBackupError(
                .system, "refusing mount_point \(mountPoint): something is already mounted there",
                hint: "unmount it or choose another mount_point")
        }
        if access(mountPoint, F_OK) == 0 && !LocalFiles.isEmptyDirectory(mountPoint) {
            throw ImgBackupError(
                .system, "refusing mount_point \(mountPoint): it is not empty",
                hint: "files there would be hidden by the mount; move them or choose another mount_point")
        }
    }

    public func up() async throws -> LayerRecord {
        let found: FilesystemProbe.Found
        do {
            found = try await FilesystemProbe.probe(device: device, deadline: deadline)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "read the filesystem on \(device)")
        }
        guard found.rawValue == filesystem.rawValue else {
            throw ImgBackupError(
                .system,
                "failed to mount \(device): it holds \(found == .none ? "no filesystem imgbackup knows" : found.rawValue), not \(filesystem.rawValue)",
                hint: "check 'filesystem' in the target's config")
        }
        do {
            try LocalFiles.makeDirectories(mountPoint, mode: 0o700)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create the mount point \(mountPoint)")
        }
        try Self.requireUsableMountPoint(mountPoint)
        do {
            try await Mounts.mount(
                device: device, at: mountPoint, type: filesystem.rawValue,
                options: readOnly ? Self.readOnlyMountOptions(filesystem) : Self.mountOptions(filesystem),
                readOnly: readOnly, deadline: deadline)
        } catch let error as SystemCallError where error.errno == EINVAL {
            throw ImgBackupError(
                .system,
                "failed to mount \(device) at \(mountPoint): the kernel refused the \(filesystem.rawValue) filesystem in it",
                hint:
                    "the image may be truncated (compare the remote file's size with the target's size) or its filesystem damaged"
            )
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "mount \(device) at \(mountPoint)")
        }
        // A read-only mount cannot change its root's mode: every read-write
        // open has made it 0700 (Mounts.restrictRootToOwner).
        if !readOnly { try restrictRoot() }
        return intent
    }

    private func restrictRoot() throws(ImgBackupError) {
        do {
            try Mounts.restrictRootToOwner(mountPoint)
        } catch {
            // The stack recorded the intent before up(): its unwind unmounts.
            throw ImgBackupError.wrapping(error, .system, failedTo: "make \(mountPoint) root's alone")
        }
    }

    /// Not a byte written: ext4 without its journal (`noload`: a journal
    /// that needs a replay is left as it is, and what its last transactions
    /// held is not seen), btrfs without replaying its log tree. The device
    /// under it is read-only as well, so the kernel could not write if it
    /// tried.
    static func readOnlyMountOptions(_ filesystem: Target.Filesystem) -> String {
        switch filesystem {
        case .ext4: "noload"
        case .btrfs: "rescue=nologreplay"
        }
    }

    /// ext4's default after a write error is to carry on: later commits then
    /// move the journal's tail past metadata whose write-back failed (a full
    /// remote), and the damage is only repairable by hand. remount-ro aborts
    /// the journal at the first failed metadata write, data_err=abort at the
    /// first failed data write, so it still holds those blocks and the next
    /// open's check replays them (the unmount after such a failure shuts the
    /// filesystem down first: `down` below). btrfs turns read-only on a
    /// failed write by itself, and its old tree stays whole.
    ///
    /// `noinit_itable`: init leaves ext4's inode tables unwritten, and the
    /// kernel would otherwise zero them in the background after every mount
    /// (gigabytes over the network for a large image: `FilesystemMaker`).
    static func mountOptions(_ filesystem: Target.Filesystem) -> String {
        switch filesystem {
        case .ext4: "errors=remount-ro,data_err=abort,noinit_itable"
        case .btrfs: ""
        }
    }
}

extension FilesystemLayer {
    static let kind = "filesystem"

    static func describe(mountPoint: String) -> String { "filesystem mount at \(mountPoint)" }

    static func isUp(mountPoint: String) -> Bool {
        MountTable.mount(at: mountPoint).map { !$0.filesystemType.hasPrefix("fuse") } ?? false
    }

    /// Unmounts the image's filesystem, only if `device` is what is mounted
    /// there: never something else mounted at the mount point.
    static func down(device: String, mountPoint: String, force: Bool, in context: TeardownContext) async throws {
        guard let entry = MountTable.mount(at: mountPoint),
            entry.source == device
                || BlockDeviceStats.kernelName(of: entry.source) == BlockDeviceStats.kernelName(of: device)
        else { return }
        if entry.filesystemType == "ext4" { try await keepJournalIfWritesFailed(mountPoint, force: force, in: context) }
        do {
            try await unmountRetryingWhileNobodyUsesIt(mountPoint, deadline: context.stepDeadline)
        } catch let error as SystemCallError where error.errno == EBUSY {
            guard force else {
                throw ImgBackupError(
                    .invalidState, "failed to unmount \(mountPoint): it is busy",
                    hint: "close the programs using it (fuser -vm \(mountPoint)), or use close --force")
            }
            context.logger.notice("\(mountPoint) is busy: detaching it lazily")
            try await Mounts.unmount(mountPoint, mode: .lazy, deadline: context.stepDeadline)
        }
    }

    /// A mount that nobody is seen using can still be busy for a moment:
    /// a process that was just killed lets go of its files as it exits.
    /// Retried for a few seconds (within the step's deadline) while no
    /// process uses it; a process that does (a person's shell) makes it busy
    /// at once, and so does a user no process table shows for long.
    static let busyRetryLimit: Duration = .seconds(5)

    private static func unmountRetryingWhileNobodyUsesIt(_ mountPoint: String, deadline: Duration) async throws {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: min(deadline, busyRetryLimit))
        while true {
            do {
                return try await Mounts.unmount(mountPoint, deadline: deadline)
            } catch let error as SystemCallError where error.errno == EBUSY {
                let users = ProcessTable.processes(using: mountPoint).filter(ProcessTable.isAlive)
                guard users.isEmpty, clock.now < end else { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// A filesystem whose writes did not all reach the remote (a full
    /// remote, a hang) is shut down before it is unmounted: see
    /// `Mounts.shutDownKeepingJournal`. The sync asks whether everything
    /// written reached the remote. Close has written the image out under
    /// the hang watchdog by now, so a sync that runs out of time here means
    /// the remote stopped answering since: the stack then cuts it off and
    /// comes back forced (the stuck sync would hold the mount busy anyway).
    private static func keepJournalIfWritesFailed(
        _ mountPoint: String, force: Bool, in context: TeardownContext
    ) async throws {
        var failure = context.imageWritesFailed ? "writes to the image failed earlier" : context.writeOutFailure
        // Whoever asked syncfs first heard of a failed write-back (a
        // person's own `sync -f`): the filesystem having stopped itself
        // still says so.
        if failure == nil, MountTable.mount(at: mountPoint)?.turnedReadOnly == true {
            failure = "the filesystem made itself read-only after an error (the kernel log says which)"
        }
        if failure == nil {
            do {
                try await Mounts.sync(mountPoint, deadline: context.stepDeadline)
            } catch let error as SystemCallError {
                failure = "the last write-out failed (\(error))"
            } catch let stuck as DeadlineExceeded where !force {
                throw stuck
            } catch {}
        }
        guard let failure else { return }
        context.lostWrites.record(failure)
        do {
            try Mounts.shutDownKeepingJournal(mountPoint)
            context.logger.notice(
                "\(failure): shut the filesystem at \(mountPoint) down, so the next open replays its journal")
        } catch {
            context.logger.error("\(failure), and shutting the filesystem at \(mountPoint) down failed: \(error)")
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
