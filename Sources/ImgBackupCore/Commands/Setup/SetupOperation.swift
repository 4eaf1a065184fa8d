import Foundation
import ImgBackupOS

/// `imgbackup setup`: a new target from nothing. Beside the config file it
/// makes what the target needs and never overwrites any of it: the
/// image's key (`NAME.key`, 64 random bytes, 0600), an ssh key for the
/// backup host (`NAME.ssh`, ed25519, no passphrase: runs are unattended),
/// and the backup host's key in `known_hosts`, recorded only once a person
/// or `--host-key-fingerprint` vouched for it. Then it appends the target's
/// table to the config (checked by loading it back).
public struct SetupOperation {
    public struct Request: Sendable {
        public var name: String
        public var remote: RemoteLocation
        public var port: Int
        public var size: String
        public var filesystem: Target.Filesystem
        /// rsync sources; none: no [copy] table yet.
        public var sources: [String]
        public var configPath: String
        /// Where the image is mounted while open; nil: /mnt/imgbackup/NAME.
        public var mountPoint: String?

        public init(
            name: String, remote: RemoteLocation, port: Int, size: String, filesystem: Target.Filesystem,
            sources: [String], configPath: String
        ) {
            self.name = name
            self.remote = remote
            self.port = port
            self.size = size
            self.filesystem = filesystem
            self.sources = sources
            self.configPath = configPath
        }
    }

    /// One key the backup host offered, as ssh-keyscan printed it.
    public struct HostKey: Sendable, Equatable {
        /// The known_hosts line.
        public let line: String
        /// `SHA256:...`, as `ssh-keygen -lf` prints it on the backup host.
        public let fingerprint: String
        /// ED25519, ECDSA, RSA.
        public let type: String
    }

    public let request: Request
    public let runner: any CommandRunning

    public init(request: Request, runner: any CommandRunning) {
        self.request = request
        self.runner = runner
    }

    var directory: String { (request.configPath as NSString).deletingLastPathComponent }
    public var keyFile: String { "\(directory)/\(request.name).key" }
    public var sshKey: String { "\(directory)/\(request.name).ssh" }
    public var knownHosts: String { "\(directory)/known_hosts" }
    /// How known_hosts names the host: `[host]:port` off port 22.
    var knownHostsName: String {
        request.port == 22 ? request.remote.host : "[\(request.remote.host)]:\(request.port)"
    }

    /// Before anything is made: the name is free in the config, and the
    /// config (if there is one) loads.
    public func refuseAnExistingTarget() throws(ImgBackupError) {
        guard FileManager.default.fileExists(atPath: request.configPath) else { return }
        let config = try ConfigLoader.load(path: request.configPath)
        if config.targets.contains(where: { $0.name == request.name }) {
            throw ImgBackupError(
                .refused, "refusing to set up target '\(request.name)': \(request.configPath) already has it",
                hint: "pick another name, or edit [target.\(request.name)] by hand")
        }
    }

    /// The keys the backup host offers, with their fingerprints.
    public func scanHostKeys() async throws(ImgBackupError) -> [HostKey] {
        let host = request.remote.host
        let scan: CommandResult
        do {
            scan = try await runner.run(
                Command(
                    "ssh-keyscan", ["-T", "10", "-p", String(request.port), "-t", "ed25519,ecdsa,rsa", "--", host],
                    timeout: .seconds(30)))
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "ask \(host) for its host key")
        }
        let lines = scan.standardOutput.split(whereSeparator: \.isNewline).map(String.init)
            .filter { !$0.hasPrefix("#") && $0.split(separator: " ").count >= 3 }
        guard !lines.isEmpty else {
            throw ImgBackupError(
                .remote, "failed to get a host key from \(host) port \(request.port): \(scan.failureSummary)",
                hint: "check that \(host) runs sshd on port \(request.port) and is reachable from here")
        }
        var keys: [HostKey] = []
        for line in lines {
            var command = Command("ssh-keygen", ["-l", "-E", "sha256", "-f", "-"], timeout: .seconds(30))
            command.input = .text(line + "\n")
            guard let printed = try? await runner.run(command), printed.succeeded,
                let fingerprint = printed.standardOutput.split(separator: " ").dropFirst().first,
                let type = printed.standardOutput.split(separator: " ").last
            else { continue }
            keys.append(
                HostKey(
                    line: line, fingerprint: String(fingerprint),
                    type: type.trimmingCharacters(in: CharacterSet(charactersIn: "()\n"))))
        }
        return keys
    }

    /// The scanned key with `fingerprint`, or a clear refusal.
    public static func vouched(_ fingerprint: String, among keys: [HostKey], host: String) throws(ImgBackupError)
        -> HostKey
    {
        guard let key = keys.first(where: { $0.fingerprint == fingerprint }) else {
            throw ImgBackupError(
                .remote,
                "refusing the host key of \(host): none of its keys has the fingerprint \(fingerprint) (it offered \(keys.map(\.fingerprint).joined(separator: ", ")))",
                hint:
                    "on the backup host, ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub prints the right one; a different key may mean someone is in between"
            )
        }
        return key
    }

    /// The image's key and the ssh key, each made only if it is not there.
    /// Returns what was made.
    public func makeKeys() async throws(ImgBackupError) -> [String] {
        var made: [String] = []
        do {
            try LocalFiles.makeDirectories(directory)
            if try KeyFile.createRandom(path: keyFile, bytes: 64) { made.append(keyFile) }
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create the key file \(keyFile)")
        }
        if !FileManager.default.fileExists(atPath: sshKey) {
            let comment = "imgbackup \(request.name) on \(ProcessInfo.processInfo.hostName)"
            let result: CommandResult
            do {
                result = try await runner.run(
                    Command(
                        "ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", sshKey],
                        timeout: .seconds(60)))
            } catch {
                throw ImgBackupError.wrapping(error, .system, failedTo: "make the ssh key \(sshKey)")
            }
            guard result.succeeded else {
                throw ImgBackupError(.system, "failed to make the ssh key \(sshKey): \(result.failureSummary)")
            }
            made.append(sshKey)
        }
        return made
    }

    /// Adds the vouched-for key to known_hosts, under the name ssh looks it up by.
    public func record(_ key: HostKey) throws(ImgBackupError) {
        let fields = key.line.split(separator: " ", maxSplits: 1)
        let line = "\(knownHostsName) \(fields.count == 2 ? String(fields[1]) : key.line)\n"
        let existing = LocalFiles.contents(knownHosts) ?? ""
        guard !existing.split(separator: "\n").contains(Substring(line.dropLast())) else { return }
        do {
            try LocalFiles.writeAtomically(knownHosts, existing + line)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "record the host key in \(knownHosts)")
        }
    }

    /// The target's table, as appended to the config.
    public var table: String {
        let name = request.name
        var lines = [
            "", "# Made by 'imgbackup setup \(name)'.", "[target.\(name)]",
            "remote        = \(Self.toml(request.remote.sshfsSource))",
            "port          = \(request.port)",
            "identity_file = \(Self.toml(sshKey))",
            "ssh_options   = [\(Self.toml("UserKnownHostsFile=\(knownHosts)")), \(Self.toml("StrictHostKeyChecking=yes"))]",
            "image         = \(Self.toml("\(name).img"))",
            "size          = \(Self.toml(request.size))",
            "filesystem    = \(Self.toml(request.filesystem.rawValue))",
            "key_file      = \(Self.toml(keyFile))",
            "mount_point   = \(Self.toml(request.mountPoint ?? "/mnt/imgbackup/\(name)"))",
        ]
        if !request.sources.isEmpty {
            lines += [
                "[target.\(name).copy]", "method  = \"rsync\"",
                "sources = [\(request.sources.map(Self.toml).joined(separator: ", "))]",
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Appends the table; if the config does not load with it, puts the
    /// old config back and says why.
    public func writeTarget() throws(ImgBackupError) -> Target {
        let path = request.configPath
        let before = LocalFiles.contents(path)
        do {
            try LocalFiles.writeAtomically(path, (before ?? "") + table)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "write \(path)")
        }
        do {
            return try ConfigLoader.load(path: path).target(named: request.name)
        } catch {
            if let before { try? LocalFiles.writeAtomically(path, before) } else { unlink(path) }
            throw ImgBackupError(
                error.code, "refusing to set up target '\(request.name)': the table would not load: \(error.message)",
                hint: error.hint)
        }
    }

    /// A TOML basic string.
    static func toml(_ text: String) -> String {
        var escaped = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    escaped += String(format: "\\u%04X", scalar.value)
                } else {
                    escaped.unicodeScalars.append(scalar)
                }
            }
        }
        return "\"\(escaped)\""
    }
}

#if canImport(Glibc)
    import Glibc
#endif
