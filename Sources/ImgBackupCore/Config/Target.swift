import ImgBackupOS

/// One `[target.NAME]` table: an encrypted image on a remote host and how to
/// reach, unlock, mount and fill it.
public struct Target: Sendable, Equatable {
    public enum Filesystem: String, Sendable, CaseIterable { case ext4, btrfs }
    public enum Transport: String, Sendable, CaseIterable { case sshfs, nbd, s3 }

    /// Where the key comes from. The bytes themselves are read only when needed.
    public enum KeySource: Sendable, Equatable {
        /// `key_file` (or `--key-file PATH`): refused if group or others can read it.
        case file(String)
        /// `key_command`: its stdout is the key (`pass show ...`).
        case command([String])
        /// `--key-fd N`, `--key-file -` (0): read to end of file.
        case descriptor(Int32)
        /// A systemd credential: `$CREDENTIALS_DIRECTORY/imgbackup.TARGET`.
        case credential(String)
        /// Neither key_file nor key_command: the key must come from the
        /// command line or a systemd credential.
        case unset
    }

    public enum NBDExport: Sendable, Equatable {
        /// Run on the remote over ssh; speaks NBD on stdin/stdout.
        case command([String])
        /// nbd://, nbds://, nbd+unix://
        case uri(String)
    }

    public struct Copy: Sendable, Equatable {
        public enum Method: String, Sendable, CaseIterable {
            case rsync, borg
            case btrfsSend = "btrfs-send"
            case command
        }
        public var method: Method
        public var sources: [String] = []
        public var exclude: [String] = []
        /// rsync, borg: each source stays on its own filesystem (`-x`,
        /// `--one-file-system`), so a source of "/" is the root filesystem,
        /// not every mount under it (the image's own mount included).
        public var oneFileSystem = true
        public var sourceSubvolume: String?
        public var command: [String]?
        /// btrfs-send: where the local read-only snapshots live (on the
        /// source's filesystem). Default: `.imgbackup-snapshots` beside the
        /// source subvolume.
        public var snapshotDirectory: String?
        /// btrfs-send: run just before and just after taking the snapshot
        /// (stop a database for a second, start it again). resume always runs
        /// once quiesce has.
        public var quiesceCommand: [String]?
        public var resumeCommand: [String]?
        /// borg: a file (mode 0600) holding the repository passphrase. With
        /// it the repository is encrypted (repokey-blake2); without it, it
        /// is not (the image around it is).
        public var borgPassphraseFile: String?
        /// ssh:// sources: the key and extra ssh options for logging in to
        /// the source hosts (the image's own identity_file is not used there).
        public var sourceIdentityFile: String?
        public var sourceSSHOptions: [String] = []
    }

    /// Commands around the copy step. Post-hooks run after a failed copy too,
    /// with IMGBACKUP_RESULT set to "success" or "failure".
    public struct Hooks: Sendable, Equatable {
        public var pre: [[String]] = []
        public var post: [[String]] = []
    }

    public struct Retention: Sendable, Equatable {
        public var keepDaily: Int?
        public var keepWeekly: Int?
        public var keepMonthly: Int?
    }

    public struct Timeouts: Sendable, Equatable {
        /// No progress and no answer from the transport for this long: a hang.
        public var stall: Duration = .seconds(120)
        /// Each teardown step gets this long before escalating.
        public var teardown: Duration = .seconds(30)
    }

    public let name: String
    public var remote: RemoteLocation
    public var port: Int = 22
    public var identityFile: String?
    public var sshOptions: [String] = []
    public var image: String
    public var size: ByteSize?
    /// At most this many bytes a second leave on each of the target's
    /// connections (`bandwidth_limit`); nil: as fast as the link goes.
    public var bandwidthLimit: ByteSize?
    public var filesystem: Filesystem = .ext4
    public var transport: Transport = .sshfs
    public var key: KeySource
    public var mountPoint: String
    public var nbd: NBDExport?
    /// The bucket of an `s3` target (its `remote` then names the endpoint's
    /// host and the bucket, for messages, and `image` is the key prefix).
    public var s3: S3Location?
    public var copy: Copy?
    public var retention: Retention?
    public var hooks = Hooks()
    public var timeouts = Timeouts()
    /// Key derivation for new keyslots. Strong by default; tests lower it.
    public var pbkdf: PBKDFSettings = .strong

    public init(name: String, remote: RemoteLocation, image: String, key: KeySource, mountPoint: String) {
        self.name = name
        self.remote = remote
        self.image = image
        self.key = key
        self.mountPoint = mountPoint
    }

    /// The device-mapper name: /dev/mapper/imgbackup-NAME.
    public var mappingName: String { "\(Self.mappingPrefix)\(name)" }
    /// Every target's device-mapper name starts with it.
    public static let mappingPrefix = "imgbackup-"

    /// Target names become file and device names: keep them plain.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && !name.hasPrefix("-")
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }
}

/// A loaded configuration file.
public struct Configuration: Sendable {
    /// The file it came from, for messages.
    public let path: String
    /// Targets in file order.
    public let targets: [Target]
    /// `[metrics] directory`: where `run` writes Prometheus textfile metrics
    /// (nil: the default, under the state directory).
    public var metricsDirectory: String? = nil
    /// `[notify] command`: run after every `run` that did not succeed.
    public var notifyCommand: [String]? = nil

    public func target(named name: String) throws(ImgBackupError) -> Target {
        if let target = targets.first(where: { $0.name == name }) { return target }
        let known = targets.map(\.name).joined(separator: ", ")
        throw ImgBackupError(
            .config, "target '\(name)' is not in \(path)",
            hint: known.isEmpty ? "add a [target.\(name)] table" : "known targets: \(known)")
    }
}
