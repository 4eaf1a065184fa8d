import ImgBackupOS

/// The remote directory, mounted over sshfs under the runtime directory.
public struct SSHFSLayer: Layer {
    public let target: Target
    public let mountPoint: String
    public let runner: any CommandRunning
    public let deadline: Duration

    public init(target: Target, mountPoint: String, runner: any CommandRunning, deadline: Duration = .seconds(60)) {
        self.target = target
        self.mountPoint = mountPoint
        self.runner = runner
        self.deadline = deadline
    }

    public var intent: LayerRecord { .sshfs(source: target.remote.sshfsSource, mountPoint: mountPoint) }

    public func up() async throws -> LayerRecord {
        try LocalFiles.makeDirectories(mountPoint)
        let command = Command("sshfs", Self.arguments(for: target, mountPoint: mountPoint), timeout: deadline)
        let result: CommandResult
        do {
            result = try await runner.run(command)
        } catch let notFound as ExecutableNotFound {
            throw ImgBackupError(.system, "failed to mount the remote directory: \(notFound)", hint: "apt-get install sshfs")
        } catch let timeout as DeadlineExceeded {
            throw ImgBackupError(
                .remote, "failed to mount \(target.remote) over sshfs: no answer within \(timeout.deadline.secondsText)",
                hint: "check that \(target.remote.host) port \(target.port) is reachable")
        }
        guard result.succeeded, MountTable.mount(at: mountPoint)?.filesystemType == "fuse.sshfs" else {
            throw ImgBackupError(
                .remote, "failed to mount \(target.remote) over sshfs: \(result.failureSummary)",
                hint: "check remote, port, identity_file and ssh_options; try: ssh -p \(target.port) \(target.remote.sshDestination)")
        }
        return intent
    }

    /// sshfs's argv. Each option is its own `-o`, with commas and backslashes
    /// escaped the way libfuse's option parser expects, so a value can never
    /// split into a second option.
    public static func arguments(for target: Target, mountPoint: String) -> [String] {
        var options = [
            "reconnect",
            // Each write waits for the server's answer. By default sshfs
            // acknowledges a write before it lands and reports a failure
            // only at the next flush, then forgets it: a journal can then
            // believe a block is on the remote that never got there (a full
            // remote left ext4 needing a manual fsck). With this, the write
            // that failed is the write that reports it.
            "sshfs_sync",
            // Keepalives detect a dead connection; a frozen sftp-server behind a
            // live sshd is the watchdog's job (sshd still answers keepalives).
            "ServerAliveInterval=15",
            "ServerAliveCountMax=3",
            "ConnectTimeout=20",
            "BatchMode=yes",
            "Port=\(target.port)",
        ]
        if let identity = target.identityFile {
            options.append("IdentityFile=\(identity)")
            options.append("IdentitiesOnly=yes")
        }
        options += target.sshOptions
        var arguments = [target.remote.sshfsSource, mountPoint]
        for option in options {
            arguments += ["-o", escapeFuseOption(option)]
        }
        return arguments
    }

    static func escapeFuseOption(_ option: String) -> String {
        option.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ",", with: "\\,")
    }
}

import Foundation
