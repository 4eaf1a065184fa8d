import Foundation
import ImgBackupOS
import TOMLKit

/// Reads the TOML configuration. Every problem is an ImgBackupError(.config)
/// naming file, line and key: unknown keys, wrong types, bad sizes and
/// durations, relative paths, missing required keys.
public enum ConfigLoader {
    public static let defaultPath = "/etc/imgbackup/imgbackup.toml"

    /// `--config`, else `IMGBACKUP_CONFIG`, else the default path.
    public static func resolvePath(explicit: String?, environment: [String: String]) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let fromEnvironment = environment["IMGBACKUP_CONFIG"], !fromEnvironment.isEmpty { return fromEnvironment }
        return defaultPath
    }

    public static func load(path: String) throws(ImgBackupError) -> Configuration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            let reason =
                !FileManager.default.fileExists(atPath: path)
                ? "no such file"
                : !FileManager.default.isReadableFile(atPath: path) ? "permission denied" : "not UTF-8 text"
            throw ImgBackupError(
                .config, "failed to read config \(path): \(reason)", hint: "pass --config FILE or set IMGBACKUP_CONFIG")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws(ImgBackupError) -> Configuration {
        if let problem = TOMLPreflight.firstProblem(in: text) {
            throw ImgBackupError(.config, "\(path):\(problem.line): invalid TOML: \(problem.reason)")
        }
        let root: TOMLTable
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ImgBackupError(
                .config, "\(path):\(error.source.begin.line): invalid TOML: \(error.description)")
        } catch {
            throw ImgBackupError(.config, "\(path): invalid TOML: \(error)")
        }
        let document = TableReader(table: root, keyPath: [], context: .init(path: path, lines: LineLocator(text)))
        var targets: [Target] = []
        if let targetTables = try document.table("target") {
            for name in targetTables.keysInFileOrder {
                guard let table = try targetTables.table(name) else { continue }
                guard Target.isValidName(name) else {
                    throw table.error(
                        nil, "target name '\(name)' may use only letters, digits, '-' and '_' (64 at most)")
                }
                targets.append(try readTarget(name: name, table))
            }
            try targetTables.rejectUnknownKeys()
        }
        var configuration = Configuration(path: path, targets: targets)
        if let metrics = try document.table("metrics") {
            configuration.metricsDirectory = try metrics.absolutePath("directory")
            try metrics.rejectUnknownKeys()
        }
        configuration.notifyCommand = try notifyCommand(document)
        try document.rejectUnknownKeys()
        return configuration
    }

    private static func notifyCommand(_ document: TableReader) throws(ImgBackupError) -> [String]? {
        guard let notify = try document.table("notify") else { return nil }
        let command = try notify.stringArray("command")
        if let command, command.first?.isEmpty ?? true {
            throw notify.error(
                "command", "must be a non-empty argv whose first element is a program name or absolute path")
        }
        try notify.rejectUnknownKeys()
        return command
    }

    /// The notify command of a config that does not load as a whole (a bad
    /// key elsewhere): a failed run still tells someone. Nil when the file
    /// cannot be read or is not TOML at all.
    public static func notifyCommandLeniently(path: String) -> [String]? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
            TOMLPreflight.firstProblem(in: text) == nil,
            let root = try? TOMLTable(string: text)
        else { return nil }
        let document = TableReader(table: root, keyPath: [], context: .init(path: path, lines: LineLocator(text)))
        return try? notifyCommand(document)
    }

    private static func readTarget(name: String, _ table: TableReader) throws(ImgBackupError) -> Target {
        let transport = try table.choice("transport", Target.Transport.self) ?? .sshfs
        let s3 = try readS3(table, name: name, transport: transport)
        let remote: RemoteLocation
        let image: String
        if let s3 {
            // The bucket is the image's place: `remote` would only mislead.
            if try table.string("remote") != nil {
                throw table.error(
                    "remote", "is for sshfs and nbd; an s3 target's place is its [target.\(name).s3] table")
            }
            if try table.string("image") != nil {
                throw table.error("image", "is for sshfs and nbd; an s3 target's objects are named by its s3 prefix")
            }
            let host = S3Location.parseEndpoint(s3.endpoint)?.host ?? s3.endpoint
            remote = RemoteLocation(user: nil, host: host, directory: "/\(s3.bucket)")
            image = s3.prefix
        } else {
            let remoteText = try table.require("remote", table.string)
            switch RemoteLocation.parse(remoteText) {
            case .success(let location): remote = location
            case .failure(let failure):
                throw table.error("remote", "'\(remoteText)' is not [user@]host:/directory: \(failure.reason)")
            }
            image = try table.string("image") ?? "\(name).img"
            if image.isEmpty || image.contains("/") || image == "." || image == ".." || image.hasPrefix("-") {
                throw table.error("image", "'\(image)' must be a plain file name inside the remote directory")
            }
        }

        let keyFile = try table.absolutePath("key_file")
        let keyCommand = try table.stringArray("key_command")
        let key: Target.KeySource
        switch (keyFile, keyCommand) {
        case (let file?, nil): key = .file(file)
        case (nil, let command?):
            guard let first = command.first, first.hasPrefix("/") || !first.contains("/") else {
                throw table.error(
                    "key_command", "must be a non-empty argv whose first element is a program name or absolute path")
            }
            key = .command(command)
        case (nil, nil): key = .unset
        case (_?, _?): throw table.error("key_command", "give key_file or key_command, not both")
        }

        let mountPoint = try table.absolutePath("mount_point") ?? "/mnt/imgbackup/\(name)"
        var target = Target(name: name, remote: remote, image: image, key: key, mountPoint: mountPoint)
        if let port = try table.int("port") {
            guard (1...65535).contains(port) else { throw table.error("port", "\(port) is not a TCP port (1-65535)") }
            target.port = port
        }
        target.identityFile = try table.absolutePath("identity_file")
        target.sshOptions = try sshOptions(table, "ssh_options")
        target.size = try table.size("size")
        if let size = target.size, size.bytes < 32 << 20 {
            throw table.error("size", "\(size) is too small: the LUKS2 header alone takes 16 MiB (use at least 32M)")
        }
        target.bandwidthLimit = try table.size("bandwidth_limit")
        if let limit = target.bandwidthLimit, limit.bytes < 8 << 10 {
            throw table.error(
                "bandwidth_limit",
                "\(limit) a second is too little for ssh to keep a connection alive (use at least 8K)")
        }
        target.filesystem = try table.choice("filesystem", Target.Filesystem.self) ?? .ext4
        target.transport = transport
        target.s3 = s3

        if let nbd = try table.table("nbd") {
            let command = try nbd.stringArray("command")
            let uri = try nbd.string("uri")
            switch (command, uri) {
            case (let command?, nil):
                guard !command.isEmpty else { throw nbd.error("command", "must not be empty") }
                target.nbd = .command(command)
            case (nil, let uri?):
                guard ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"].contains(where: uri.hasPrefix) else {
                    throw nbd.error("uri", "'\(uri)' is not an NBD URI (nbd://, nbds://, nbd+unix://)")
                }
                target.nbd = .uri(uri)
            case (nil, nil): throw nbd.error(nil, "needs exactly one of command or uri")
            case (_?, _?): throw nbd.error("uri", "give command or uri, not both")
            }
            try nbd.rejectUnknownKeys()
        }
        if target.transport == .nbd && target.nbd == nil {
            throw table.error("transport", "is nbd but there is no [target.\(name).nbd] table")
        }

        if let copyTable = try table.table("copy") {
            target.copy = try readCopy(copyTable)
            if target.copy?.method == .btrfsSend && target.filesystem != .btrfs {
                throw copyTable.error(
                    "method", "btrfs-send receives into a btrfs image, but filesystem is \(target.filesystem.rawValue)")
            }
        }

        if let retention = try table.table("retention") {
            var value = Target.Retention()
            value.keepDaily = try retention.count("keep_daily")
            value.keepWeekly = try retention.count("keep_weekly")
            value.keepMonthly = try retention.count("keep_monthly")
            target.retention = value
            try retention.rejectUnknownKeys()
        }
        if let hooks = try table.table("hooks") {
            target.hooks.pre = try hooks.commandArray("pre") ?? []
            target.hooks.post = try hooks.commandArray("post") ?? []
            try hooks.rejectUnknownKeys()
        }
        if let timeouts = try table.table("timeouts") {
            target.timeouts.stall = try timeouts.duration("stall") ?? target.timeouts.stall
            target.timeouts.teardown = try timeouts.duration("teardown") ?? target.timeouts.teardown
            try timeouts.rejectUnknownKeys()
        }
        if let luks = try table.table("luks") {
            target.pbkdf.kind = try luks.choice("pbkdf", PBKDFSettings.Kind.self) ?? .argon2id
            if let iterations = try luks.int("pbkdf_iterations") {
                let minimum = target.pbkdf.kind == .pbkdf2 ? 1000 : 4
                guard iterations >= minimum, iterations <= Int(UInt32.max) else {
                    throw luks.error(
                        "pbkdf_iterations",
                        "\(iterations) is out of range (at least \(minimum) for \(target.pbkdf.kind.rawValue))")
                }
                target.pbkdf.forcedIterations = UInt32(iterations)
            }
            try luks.rejectUnknownKeys()
        }
        try table.rejectUnknownKeys()
        return target
    }

    /// `[target.NAME.s3]`, required with `transport = "s3"` and refused without it.
    private static func readS3(_ table: TableReader, name: String, transport: Target.Transport)
        throws(ImgBackupError) -> S3Location?
    {
        guard let s3 = try table.table("s3") else {
            if transport == .s3 { throw table.error("transport", "is s3 but there is no [target.\(name).s3] table") }
            return nil
        }
        guard transport == .s3 else {
            throw s3.error(nil, "is only for transport = \"s3\" (this target's transport is \(transport.rawValue))")
        }
        let endpoint = try s3.require("endpoint", s3.string)
        guard S3Location.parseEndpoint(endpoint) != nil else {
            throw s3.error(
                "endpoint", "'\(endpoint)' is not an http:// or https:// URL of a host (and port), with no path")
        }
        let bucket = try s3.require("bucket", s3.string)
        guard S3Location.isValidBucket(bucket) else {
            throw s3.error("bucket", "'\(bucket)' is not a bucket name (3-63 of a-z, 0-9, '.', '-')")
        }
        let prefix = try s3.string("prefix") ?? name
        guard S3Location.isValidPrefix(prefix) else {
            throw s3.error(
                "prefix", "'\(prefix)' must be segments of letters, digits, '.', '_' and '-' separated by single '/'")
        }
        let file = try s3.absolutePath("credentials_file")
        let command = try s3.stringArray("credentials_command")
        let credentials: S3Location.Credentials
        switch (file, command) {
        case (let file?, nil): credentials = .file(file)
        case (nil, let command?):
            guard let first = command.first, first.hasPrefix("/") || !first.contains("/") else {
                throw s3.error(
                    "credentials_command",
                    "must be a non-empty argv whose first element is a program name or absolute path")
            }
            credentials = .command(command)
        case (nil, nil): throw s3.error(nil, "needs credentials_file or credentials_command")
        case (_?, _?): throw s3.error("credentials_command", "give credentials_file or credentials_command, not both")
        }
        var location = S3Location(endpoint: endpoint, bucket: bucket, prefix: prefix, credentials: credentials)
        if let size = try s3.size("object_size") {
            guard S3Location.isValidObjectSize(size) else {
                throw s3.error("object_size", "\(size) must be a power of two from 64K to 64M")
            }
            location.objectSize = size
        }
        if let region = try s3.string("region") {
            guard !region.isEmpty, region.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") })
            else { throw s3.error("region", "'\(region)' is not a region name (e.g. \"eu-central-1\")") }
            location.region = region
        }
        location.addressing = try s3.choice("addressing", S3Location.Addressing.self) ?? .path
        if let profile = try s3.string("profile") {
            guard !profile.isEmpty, !profile.contains(where: { $0 == "]" || $0.isNewline }) else {
                throw s3.error("profile", "'\(profile)' is not a credentials section name")
            }
            location.profile = profile
        }
        try s3.rejectUnknownKeys()
        return location
    }

    private static func sshOptions(_ table: TableReader, _ key: String) throws(ImgBackupError) -> [String] {
        let options = try table.stringArray(key) ?? []
        for option in options where !option.contains("=") || option.hasPrefix("-") || option.contains("\n") {
            throw table.error(key, "'\(option)' is not an ssh option of the form Name=value")
        }
        return options
    }

    /// Every source a path or an ssh:// URL; pulling only where the method
    /// copies paths; one login per source host (its files land in a
    /// directory named for the host); the source_* keys only with a pull.
    private static func checkSources(_ copy: Target.Copy, _ table: TableReader) throws(ImgBackupError) {
        var logins: [String: SourceHost] = [:]
        var pulls = false
        for text in copy.sources {
            switch CopySource.parse(text) {
            case .failure(let failure): throw table.error("sources", failure.reason)
            case .success(.local): continue
            case .success(.remote(let host, _)):
                pulls = true
                guard copy.method == .rsync || copy.method == .borg else {
                    throw table.error("sources", "'\(text)': only rsync and borg pull from other hosts")
                }
                if let other = logins[host.directoryName], other != host {
                    throw table.error(
                        "sources",
                        "'\(host.host)' appears with two logins (\(other.location.sshDestination) port \(other.port), \(host.location.sshDestination) port \(host.port)): use one per host"
                    )
                }
                logins[host.directoryName] = host
            }
        }
        if !pulls {
            if copy.sourceIdentityFile != nil {
                throw table.error("source_identity_file", "is only for ssh:// sources")
            }
            if !copy.sourceSSHOptions.isEmpty { throw table.error("source_ssh_options", "is only for ssh:// sources") }
        }
    }

    private static func readCopy(_ table: TableReader) throws(ImgBackupError) -> Target.Copy {
        let method = try table.require("method") { key throws(ImgBackupError) in
            try table.choice(key, Target.Copy.Method.self)
        }
        var copy = Target.Copy(method: method)
        copy.sources = try table.stringArray("sources") ?? []
        copy.exclude = try table.stringArray("exclude") ?? []
        copy.oneFileSystem = try table.bool("one_file_system") ?? true
        copy.sourceSubvolume = try table.absolutePath("source_subvolume")
        copy.command = try table.stringArray("command")
        copy.snapshotDirectory = try table.absolutePath("snapshot_directory")
        copy.quiesceCommand = try table.stringArray("quiesce_command")
        copy.resumeCommand = try table.stringArray("resume_command")
        copy.borgPassphraseFile = try table.absolutePath("borg_passphrase_file")
        copy.sourceIdentityFile = try table.absolutePath("source_identity_file")
        copy.sourceSSHOptions = try sshOptions(table, "source_ssh_options")
        if copy.quiesceCommand?.isEmpty == true { throw table.error("quiesce_command", "must not be empty") }
        if copy.resumeCommand?.isEmpty == true { throw table.error("resume_command", "must not be empty") }
        switch method {
        case .rsync, .borg:
            if copy.sources.isEmpty { throw table.error("sources", "\(method.rawValue) needs at least one source") }
        case .btrfsSend:
            if copy.sourceSubvolume == nil {
                throw table.error("source_subvolume", "btrfs-send needs source_subvolume")
            }
        case .command:
            if copy.command?.isEmpty ?? true {
                throw table.error("command", "method command needs a non-empty command")
            }
        }
        try checkSources(copy, table)
        try table.rejectUnknownKeys()
        return copy
    }
}
