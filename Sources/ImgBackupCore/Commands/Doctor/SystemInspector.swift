import Foundation
import ImgBackupOS

/// The real machine, for doctor.
public struct SystemInspector: SystemInspecting {
    let runner: any CommandRunning
    let paths: RuntimePaths
    /// Connects to the target's NBD export as the bridge would, then leaves:
    /// the bridge module's, so libnbd is linked only where it is used.
    let nbd: @Sendable (Target) async -> NBDLook
    /// How long one look at the remote may take, connection included.
    public static let remoteLimit: Duration = .seconds(SSHClientOptions.connectTimeoutSeconds + 20)

    public init(runner: any CommandRunning, paths: RuntimePaths, nbd: @escaping @Sendable (Target) async -> NBDLook) {
        self.runner = runner
        self.paths = paths
        self.nbd = nbd
    }

    public func lookAtLayers(_ target: Target) -> LayersLook {
        let record: StateRecord?
        do {
            record = try StateStore(paths: paths).load(target: target.name)
        } catch {
            return .unreadableRecord(message: error.message, hint: error.hint)
        }
        if let record, ProcessTable.isAlive(record.pid) {
            return .inUse(operation: record.operation.name, pid: record.pid)
        }
        let recorded = record?.layers ?? []
        if record?.operation.isByHand == true,
            recorded.contains(where: { $0.layerName == FilesystemLayer.kind && $0.isUp == true })
        {
            return .openByHand(mountPoint: target.mountPoint)
        }
        let up = recorded.filter { $0.isUp != false } + target.layersUp(besides: recorded, paths)
        guard record != nil || !up.isEmpty else { return .nothingUp }
        return .leftUp(by: record.map { "'\($0.operation)' (pid \($0.pid))" }, layers: up.map(\.description))
    }

    /// Credentials, bucket and metadata, and one probe object created twice
    /// with If-None-Match (then deleted): whether the store refuses the second.
    public func lookAtS3(_ target: Target) async -> S3Look {
        do {
            var client = try await S3Client.forTarget(target, runner: runner)
            client = S3Client(
                location: client.location, credentials: client.credentials, runner: runner, deadline: Self.remoteLimit)
            try await client.checkBucket()
            let metadata = try await client.readMetadata()
            let probe = "\(client.location.prefix).imgbackup-doctor"
            try await client.delete(probe)
            var conditional: Bool?
            if try await client.put(probe, "doctor\n", ifAbsent: true) {
                conditional = try await !client.put(probe, "doctor again\n", ifAbsent: true)
            }
            try await client.delete(probe)
            return .reachable(
                metadata: metadata, conditionalWrites: conditional, pluginInstalled: NBDKitS3.pluginPath() != nil)
        } catch {
            return .failed(message: error.message, hint: error.hint)
        }
    }

    public var isRoot: Bool { geteuid() == 0 }
    public func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }
    public func fileText(_ path: String) -> String? { KernelFile.text(path) }
    public func isMountPoint(_ path: String) -> Bool { MountTable.isMountPoint(path) }
    public func locate(_ program: String) -> String? {
        program.hasPrefix("/") ? (access(program, X_OK) == 0 ? program : nil) : try? ExecutableLocator.locate(program)
    }

    public func moduleAvailable(_ module: String) async -> Bool {
        guard
            let result = try? await runner.run(
                Command("modprobe", ["--dry-run", "--quiet", module], timeout: .seconds(10)))
        else { return false }
        return result.succeeded
    }

    public func helpText(of program: String) async -> String? {
        guard let result = try? await runner.run(Command(program, ["--help"], timeout: .seconds(10))) else {
            return nil
        }
        return result.standardOutput + result.standardError
    }

    /// One sftp session, as the target's key: cd to the directory (the batch
    /// ends there if it fails), pwd (so getting this far shows), df (not
    /// every SFTP server has it: a failing df does not end the batch), ls
    /// the image.
    public func lookAtRemote(_ target: Target) async -> RemoteLook {
        let batch = [
            "cd \(Self.sftpQuoted(target.remote.directory))", "pwd", "-df .",
            "-ls -ln \(Self.sftpQuoted(target.image))",
        ]
        switch await sftp(
            batch, destination: target.remote.sshDestination, port: target.port,
            options: SSHClientOptions.options(for: target, keepalive: false))
        {
        case .success(let result): return Self.parse(result, image: target.image)
        case .failure(let why): return .unreachable(why.reason)
        }
    }

    /// One sftp session, as the source login: ls each source path (a
    /// failing ls does not end the batch).
    public func lookAtSource(_ host: SourceHost, paths: [String], copy: Target.Copy) async -> SourceLook {
        let batch = ["pwd"] + paths.map { "-ls -ln \(Self.sftpQuoted($0))" }
        switch await sftp(
            batch, destination: host.location.sshDestination, port: host.port,
            options: SSHClientOptions.options(
                identityFile: copy.sourceIdentityFile, sshOptions: copy.sourceSSHOptions, keepalive: false))
        {
        case .success(let result): return Self.parseSource(result, paths: paths)
        case .failure(let why): return .unreachable(why.reason)
        }
    }

    /// The failure of sftp itself (not of a command in its batch).
    struct SFTPFailure: Error { let reason: String }

    private func sftp(_ batch: [String], destination: String, port: Int, options: [String]) async -> Result<
        CommandResult, SFTPFailure
    > {
        // The batch on stdin: one line per command, never a `!` shell escape
        // (every line starts with a command of ours; paths are quoted and
        // hold no line break).
        var arguments = ["-b", "-", "-P", String(port)]
        for option in options { arguments += ["-o", option] }
        arguments.append(destination)
        var command = Command("sftp", arguments, timeout: Self.remoteLimit)
        command.input = .text(batch.joined(separator: "\n") + "\n")
        do {
            return .success(try await runner.run(command))
        } catch {
            return .failure(SFTPFailure(reason: "\(error)"))
        }
    }

    /// Logged in when the batch's `pwd` answered; a path is missing when
    /// sftp could not ls it ("Can't ls: "/x" not found").
    static func parseSource(_ result: CommandResult, paths: [String]) -> SourceLook {
        guard result.standardOutput.contains("Remote working directory:") else {
            let why = sshReason(result)
            return .unreachable(why.isEmpty ? "\(result.termination)" : why)
        }
        let complaints = result.standardError.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("Can't ls") }
        return .reachable(missing: paths.filter { path in complaints.contains { $0.contains("\"\(path)\"") } })
    }

    /// ssh's own last words: sftp's "Connection closed" follows the reason.
    static func sshReason(_ result: CommandResult) -> String {
        result.standardError.split(whereSeparator: \.isNewline).map {
            $0.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        .last { !$0.isEmpty && $0 != "Connection closed" && $0 != "Connection closed." } ?? result.outputTail(lines: 1)
    }

    public func lookAtNBD(_ target: Target) async -> NBDLook { await nbd(target) }

    static func parse(_ result: CommandResult, image: String) -> RemoteLook {
        let lines = result.standardOutput.split(separator: "\n").map(String.init)
        guard lines.contains(where: { $0.hasPrefix("Remote working directory: ") }) else {
            let why = sshReason(result)
            // sftp exits 1 when a batch command failed (the cd), 255 when ssh did.
            if result.termination != .exited(1) {
                return .unreachable(why.isEmpty ? "\(result.termination)" : why)
            }
            return .noDirectory(why)
        }
        // "Size Used Avail (root) %Capacity" in KiB (OpenSSH's sftp df);
        // absent when the server has no statvfs extension or refused it.
        let available = lines.firstIndex(where: { $0.contains("Avail") && $0.contains("Size") }).flatMap { header in
            let numbers = lines.dropFirst(header + 1).first?.split(separator: " ").compactMap { UInt64($0) } ?? []
            // The server's number: saturate rather than trap.
            return numbers.count >= 3 ? saturatingProduct(numbers[2], 1024) : nil
        }
        // "-rw------- 1 0 0 100663296 Nov 22 22:00 image.img": the fifth field is the size.
        let imageBytes = lines.first { $0.hasSuffix(" \(image)") && !$0.hasPrefix("sftp>") }.flatMap { line in
            let fields = line.split(separator: " ")
            return fields.count > 4 ? UInt64(fields[4]) : nil
        }
        return .reachable(available: available, imageBytes: imageBytes)
    }

    /// sftp's batch syntax: double quotes, with \ and " escaped inside.
    /// One quoted word for sftp's batch; a line break (which would start a
    /// new batch line) becomes a space, which matches no real path.
    static func sftpQuoted(_ word: String) -> String {
        let oneLine = word.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ")
        return "\"" + oneLine.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            + "\""
    }
}

#if canImport(Glibc)
    import Glibc
#endif
