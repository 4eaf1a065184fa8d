import Foundation
import ImgBackupOS

/// What an sshfs mount reaches and how it logs in: the target's remote
/// directory, or (read-only) a host sources are pulled from.
public struct SSHFSEndpoint: Sendable, Equatable {
    public let location: RemoteLocation
    public let port: Int
    public let identityFile: String?
    public let sshOptions: [String]
    public let readOnly: Bool
    /// The config keys to check when it fails, for the hint.
    let settingsHint: String

    /// The target's remote directory; `readOnly` for `open --read-only`.
    public init(target: Target, readOnly: Bool = false) {
        location = target.remote
        port = target.port
        identityFile = target.identityFile
        sshOptions = target.sshOptions
        self.readOnly = readOnly
        settingsHint = "remote, port, identity_file and ssh_options"
    }

    /// A source host, with the copy table's source_identity_file and source_ssh_options.
    public init(source: SourceHost, copy: Target.Copy) {
        location = source.location
        port = source.port
        identityFile = copy.sourceIdentityFile
        sshOptions = copy.sourceSSHOptions
        readOnly = true
        settingsHint = "the ssh:// source, source_identity_file and source_ssh_options"
    }
}

/// A remote directory mounted over sshfs under the runtime directory: the
/// target's (where the image is), or a source host's `/`, read-only.
public struct SSHFSLayer: Layer {
    public let endpoint: SSHFSEndpoint
    public let mountPoint: String
    public let runner: any CommandRunning
    public let deadline: Duration

    public init(
        endpoint: SSHFSEndpoint, mountPoint: String, runner: any CommandRunning, deadline: Duration = .seconds(60)
    ) {
        self.endpoint = endpoint
        self.mountPoint = mountPoint
        self.runner = runner
        self.deadline = deadline
    }

    public var intent: LayerRecord { .sshfs(source: endpoint.location.sshfsSource, mountPoint: mountPoint) }

    public func up() async throws -> LayerRecord {
        try LocalFiles.makeDirectories(mountPoint)
        let command = Command("sshfs", Self.arguments(for: endpoint, mountPoint: mountPoint), timeout: deadline)
        let location = endpoint.location
        let result: CommandResult
        do {
            result = try await runner.run(command)
        } catch let notFound as ExecutableNotFound {
            throw ImgBackupError(
                .system, "failed to mount the remote directory: \(notFound)", hint: "apt-get install sshfs")
        } catch let timeout as DeadlineExceeded {
            throw ImgBackupError(
                .remote, "failed to mount \(location) over sshfs: no answer within \(timeout.deadline.secondsText)",
                hint: "check that \(location.host) port \(endpoint.port) is reachable")
        }
        guard result.succeeded, MountTable.mount(at: mountPoint)?.filesystemType == "fuse.sshfs" else {
            throw ImgBackupError(
                .remote, "failed to mount \(location) over sshfs: \(result.failureSummary)",
                hint: "check \(endpoint.settingsHint); try: ssh -p \(endpoint.port) \(location.sshDestination)")
        }
        return intent
    }

    /// sshfs's argv. Each option is its own `-o`, with commas and backslashes
    /// escaped the way libfuse's option parser expects, so a value can never
    /// split into a second option.
    public static func arguments(for endpoint: SSHFSEndpoint, mountPoint: String) -> [String] {
        var options = endpoint.readOnly ? ["ro"] : []
        options += [
            "reconnect",
            // Each write waits for the server's answer. By default sshfs
            // acknowledges a write before it lands and reports a failure
            // only at the next flush, then forgets it: a journal can then
            // believe a block is on the remote that never got there (a full
            // remote left ext4 needing a manual fsck). With this, the write
            // that failed is the write that reports it.
            "sshfs_sync",
            // The remote may plant symlinks: an absolute one (or one with
            // ..) would otherwise resolve against this machine's own files,
            // as root. sshfs refuses them with this (a default of Debian's
            // 3.7.3-1.2~deb12u1, asked for anyway; doctor checks for it).
            "contain_symlinks",
            // Keepalives detect a dead connection; a frozen sftp-server behind a
            // live sshd is the watchdog's job (sshd still answers keepalives).
            "ServerAliveInterval=15",
            "ServerAliveCountMax=3",
            "ConnectTimeout=20",
            "BatchMode=yes",
            "Port=\(endpoint.port)",
        ]
        if let identity = endpoint.identityFile {
            options.append("IdentityFile=\(identity)")
            options.append("IdentitiesOnly=yes")
        }
        options += endpoint.sshOptions
        var arguments = [endpoint.location.sshfsSource, mountPoint]
        for option in options {
            arguments += ["-o", escapeFuseOption(option)]
        }
        return arguments
    }

    static func escapeFuseOption(_ option: String) -> String {
        option.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ",", with: "\\,")
    }
}

extension SSHFSLayer {
    static let kind = "sshfs"

    static func describe(source: String, mountPoint: String) -> String { "sshfs mount of \(source) at \(mountPoint)" }

    /// The image file under the target's remote directory, when this mount
    /// is that directory's (not a source host's).
    static func imageFile(mountPoint: String, of target: Target, _ paths: RuntimePaths) -> String? {
        mountPoint == paths.remoteMount(target.name) ? "\(mountPoint)/\(target.image)" : nil
    }

    static func isUp(mountPoint: String) -> Bool {
        MountTable.mount(at: mountPoint)?.filesystemType.hasPrefix("fuse") ?? false
    }

    /// What sshfs says of a server without the `statvfs@openssh.com`
    /// extension: 1000 GiB, all of it free, made up on this machine.
    static let madeUpCapacity: UInt64 = 1000 << 30

    /// The remote filesystem's size and free space, as the SFTP server
    /// reports them; nil when it cannot (no statvfs extension, or refused).
    static func remoteCapacity(mountPoint: String) -> (total: UInt64, free: UInt64, available: UInt64)? {
        guard let capacity = try? LocalFiles.capacity(mountPoint) else { return nil }
        let madeUp = [capacity.total, capacity.free, capacity.available].allSatisfy { $0 == madeUpCapacity }
        return madeUp ? nil : capacity
    }

    static func down(mountPoint: String, force: Bool, in context: TeardownContext) async throws {
        defer {
            // The mount point and the per-target runtime directory it lives in.
            LocalFiles.removeDirectoryIfEmpty(mountPoint)
            LocalFiles.removeDirectoryIfEmpty((mountPoint as NSString).deletingLastPathComponent)
        }
        if !MountTable.isMountPoint(mountPoint) {
            // An sshfs whose `open` died while it was connecting would mount
            // after we looked: stop it first.
            let strays = ProcessTable.processes(named: "sshfs", withArgument: mountPoint)
            guard !strays.isEmpty else { return }
            await context.stopStrays(strays, "sshfs")
        }
        try await context.unmountFUSE(mountPoint, force: force, what: "the remote directory")
        // sshfs normally exits once unmounted; one stuck on a dead server
        // (its connection aborted after a hang) is stopped.
        try await context.stopLingering("sshfs", within: .seconds(2)) {
            ProcessTable.processes(named: "sshfs", withArgument: mountPoint)
        }
    }
}
