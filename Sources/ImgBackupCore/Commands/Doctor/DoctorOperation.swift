import Foundation
import ImgBackupOS

/// One thing `imgbackup doctor` checked.
public struct DoctorFinding: Sendable, Equatable, CustomStringConvertible {
    public enum Level: String, Sendable { case ok, warn, fail }

    public let level: Level
    /// "machine", or the target the finding is about.
    public let scope: String
    public let message: String
    /// What to do about it (warn and fail only).
    public let fix: String?
    /// The exit status class of a failure (what a run would fail with).
    public let code: ImgBackupError.Code?

    static func ok(_ scope: String, _ message: String) -> Self {
        Self(level: .ok, scope: scope, message: message, fix: nil, code: nil)
    }
    static func warn(_ scope: String, _ message: String, fix: String) -> Self {
        Self(level: .warn, scope: scope, message: message, fix: fix, code: nil)
    }
    static func fail(_ scope: String, _ code: ImgBackupError.Code, _ message: String, fix: String?) -> Self {
        Self(level: .fail, scope: scope, message: message, fix: fix, code: code)
    }

    /// "FAIL  offsite: refusing key file /k: ... -> chmod 600 /k"
    public var description: String {
        let label = level == .ok ? "ok  " : level.rawValue.uppercased()
        return "\(label)  \(scope): \(message)" + (fix.map { " -> \($0)" } ?? "")
    }
}

/// What doctor looks at, as a seam: the real machine (SystemInspector) or a
/// made-up one in unit tests.
public protocol SystemInspecting: Sendable {
    var isRoot: Bool { get }
    func fileExists(_ path: String) -> Bool
    func fileText(_ path: String) -> String?
    func isMountPoint(_ path: String) -> Bool
    func locate(_ program: String) -> String?
    /// Whether modprobe could load `module` (loaded, built in, or on disk).
    func moduleAvailable(_ module: String) async -> Bool
    /// What `program --help` prints (stdout and stderr), nil when it cannot run.
    func helpText(of program: String) async -> String?
    /// The remote directory of `target` as SFTP sees it.
    func lookAtRemote(_ target: Target) async -> RemoteLook
    /// The target's NBD export, connected to as the bridge would, then left.
    func lookAtNBD(_ target: Target) async -> NBDLook
    /// A host ssh:// sources are pulled from, as SFTP sees it with the copy
    /// table's login: are the source paths there?
    func lookAtSource(_ host: SourceHost, paths: [String], copy: Target.Copy) async -> SourceLook
    /// What of `target` is up on this machine, and who put it up.
    func lookAtLayers(_ target: Target) -> LayersLook
    /// An s3 target's bucket, as imgbackup's own requests see it.
    func lookAtS3(_ target: Target) async -> S3Look
}

public enum S3Look: Sendable, Equatable {
    /// The credentials, the endpoint or the bucket failed: the error's message and hint.
    case failed(message: String, hint: String?)
    /// The bucket answers. `metadata`: the image's, nil before init.
    /// `conditionalWrites`: whether a second create with If-None-Match
    /// was refused (nil: not tried).
    case reachable(metadata: S3ImageMetadata?, conditionalWrites: Bool?, pluginInstalled: Bool)
}

public enum LayersLook: Sendable, Equatable {
    case nothingUp
    /// A command that still runs has the target open.
    case inUse(operation: String, pid: Int32)
    /// The state record is there but cannot be read: every command on the
    /// target refuses until a person looks (exit 8).
    case unreadableRecord(message: String, hint: String?)
    /// A person's `open` left it open, as it should: its filesystem is mounted.
    case openByHand(mountPoint: String)
    /// Layers up (or a state record) that no running command owns: `by`
    /// names the dead command when its record is there.
    case leftUp(by: String?, layers: [String])
}

public enum SourceLook: Sendable, Equatable {
    /// Logged in; the source paths that are not there.
    case reachable(missing: [String])
    case unreachable(String)
}

public enum RemoteLook: Sendable, Equatable {
    /// Connected; the directory's free bytes (nil if the server cannot say)
    /// and the image's apparent size (nil if there is no image yet).
    case reachable(available: UInt64?, imageBytes: UInt64?)
    case noDirectory(String)
    case unreachable(String)
}

public enum NBDLook: Sendable, Equatable {
    /// Negotiated: the export's size and whether it takes trim requests.
    case connected(size: UInt64, canTrim: Bool)
    case failed(String)
}

/// `imgbackup doctor`: checks what a run needs, says how to fix each gap,
/// and fails (with the exit status a run would have) when something blocks one.
public struct DoctorOperation {
    public let targets: [Target]
    public let system: any SystemInspecting

    public init(targets: [Target], system: any SystemInspecting) {
        self.targets = targets
        self.system = system
    }

    public func run(keyCheck: (Target) async -> ImgBackupError?) async -> [DoctorFinding] {
        var findings = await machine()
        for target in targets {
            findings += programs(for: target)
            if case .command(let argv) = target.key {
                // It may wait for a person (a pinentry): its program's presence is checked above.
                findings.append(
                    .ok(
                        target.name, "the key comes from key_command \(argv.joined(separator: " ")) (not run by doctor)"
                    ))
            } else if let problem = await keyCheck(target) {
                findings.append(.fail(target.name, problem.code, problem.message, fix: problem.hint))
            } else {
                findings.append(.ok(target.name, "the key loads"))
            }
            if target.transport == .s3 {
                findings += await s3(target)
            } else {
                findings += await remote(target)
            }
            if target.nbd != nil { findings += await nbd(target) }
            findings += await sources(target)
            findings += layers(target)
        }
        return findings
    }

    /// The exit status for these findings: the first failure's, else 0.
    public static func exitStatus(_ findings: [DoctorFinding]) -> Int32 {
        findings.first { $0.level == .fail }?.code?.exitStatus ?? 0
    }

    // MARK: - this machine

    func machine() async -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        let scope = "machine"
        if system.isRoot {
            findings.append(.ok(scope, "running as root"))
        } else {
            findings.append(
                .fail(
                    scope, .system, "not running as root: mounting, loop devices and device-mapper need it",
                    fix: "run imgbackup as root (sudo)"))
        }
        let devices = system.fileText("/proc/devices") ?? ""
        let hasDeviceMapper = devices.contains(" device-mapper\n") ? true : await system.moduleAvailable("dm_mod")
        if hasDeviceMapper {
            findings.append(.ok(scope, "device-mapper"))
        } else {
            findings.append(
                .fail(
                    scope, .system, "the kernel has no device-mapper",
                    fix: "a kernel with CONFIG_BLK_DEV_DM (modprobe dm_mod)"))
        }
        let hasDMCrypt = system.fileExists("/sys/module/dm_crypt") ? true : await system.moduleAvailable("dm_crypt")
        if hasDMCrypt {
            findings.append(.ok(scope, "dm-crypt"))
        } else {
            findings.append(
                .fail(
                    scope, .system, "the kernel has no dm-crypt",
                    fix: "a kernel with CONFIG_DM_CRYPT (modprobe dm_crypt)"))
        }
        let hasLoop = system.fileExists("/dev/loop-control") ? true : await system.moduleAvailable("loop")
        if hasLoop {
            findings.append(.ok(scope, "loop devices"))
        } else {
            findings.append(.fail(scope, .system, "no /dev/loop-control", fix: "modprobe loop"))
        }
        if system.fileExists("/dev/fuse") {
            findings.append(.ok(scope, "FUSE"))
        } else {
            findings.append(.fail(scope, .system, "no /dev/fuse", fix: "modprobe fuse"))
        }
        if system.isMountPoint("/sys/fs/fuse/connections") {
            findings.append(.ok(scope, "fusectl mounted (a hung sshfs or bridge can be aborted)"))
        } else {
            findings.append(
                .warn(
                    scope, "fusectl is not mounted: a hung FUSE connection cannot be aborted, only detached",
                    fix: "mount -t fusectl fusectl /sys/fs/fuse/connections"))
        }
        if !system.isRoot {
            let allowsOther = (system.fileText("/etc/fuse.conf") ?? "").split(separator: "\n").contains {
                $0.trimmingCharacters(in: .whitespaces) == "user_allow_other"
            }
            if !allowsOther {
                findings.append(
                    .fail(
                        scope, .system,
                        "/etc/fuse.conf lacks user_allow_other, which sshfs's allow_root needs without root",
                        fix: "echo user_allow_other >> /etc/fuse.conf"))
            }
        }
        if system.locate("sshfs") != nil {
            if let help = await system.helpText(of: "sshfs"), help.contains("contain_symlinks") {
                findings.append(.ok(scope, "sshfs keeps the remote's symlinks inside its mount (contain_symlinks)"))
            } else {
                findings.append(
                    .fail(
                        scope, .system,
                        "sshfs has no contain_symlinks option: a symlink the backup host plants could lead to this machine's files",
                        fix: "upgrade sshfs (Debian 12: 3.7.3-1.2~deb12u1 or later)"))
            }
        }
        findings.append(.ok(scope, "the nbd module is not needed (imgbackup bridges NBD through FUSE)"))
        return findings
    }

    // MARK: - programs

    /// Package names to suggest, Debian's.
    static let packages = [
        "ssh": "openssh-client", "sftp": "openssh-client", "sshfs": "sshfs", "fusermount3": "fuse3",
        "mkfs.ext4": "e2fsprogs", "e2fsck": "e2fsprogs", "resize2fs": "e2fsprogs", "mkfs.btrfs": "btrfs-progs",
        "btrfs": "btrfs-progs", "fstrim": "util-linux", "rsync": "rsync", "borg": "borgbackup",
    ]

    /// The local programs `target` needs: init and the sshfs transport,
    /// the filesystem's tools, trim's, the copy method's, the key command.
    static func programsNeeded(by target: Target) -> [String] {
        var programs = target.transport == .s3 ? ["nbdkit", "curl", "fusermount3"] : ["ssh", "sshfs", "fusermount3"]
        switch target.filesystem {
        case .ext4: programs += ["mkfs.ext4", "e2fsck", "resize2fs"]
        case .btrfs: programs += ["mkfs.btrfs", "btrfs"]
        }
        if target.nbd != nil || target.transport == .s3 { programs.append("fstrim") }
        switch target.copy?.method {
        case .rsync?: programs.append("rsync")
        case .borg?: programs.append("borg")
        case .btrfsSend?: programs.append("btrfs")
        case .command?: if let first = target.copy?.command?.first { programs.append(first) }
        case nil: break
        }
        if case .command(let argv) = target.key, let first = argv.first { programs.append(first) }
        var seen = Set<String>()
        return programs.filter { seen.insert($0).inserted }
    }

    func programs(for target: Target) -> [DoctorFinding] {
        let needed = Self.programsNeeded(by: target)
        let missing = needed.filter { system.locate($0) == nil }
        guard !missing.isEmpty else {
            return [.ok(target.name, "programs: \(needed.joined(separator: ", "))")]
        }
        return missing.map { program in
            let install = Self.packages[program].map { "apt-get install \($0)" } ?? "install \(program)"
            return .fail(target.name, .system, "\(program) is not installed", fix: install)
        }
    }

    // MARK: - the remote

    func remote(_ target: Target) async -> [DoctorFinding] {
        let place = "\(target.remote)"
        switch await system.lookAtRemote(target) {
        case .unreachable(let why):
            return [
                .fail(
                    target.name, .remote, "cannot reach \(place) over SFTP: \(why)",
                    fix:
                        "check remote, port, identity_file and ssh_options; try: ssh -p \(target.port) \(target.remote.sshDestination)"
                )
            ]
        case .noDirectory(let why):
            return [
                .fail(
                    target.name, .remote, "the remote directory \(target.remote.directory) is not there: \(why)",
                    fix: "create it on the backup host, owned by the backup user (docs/remote-setup.md)")
            ]
        case .reachable(let available, let imageBytes):
            var findings: [DoctorFinding] = [.ok(target.name, "\(place) reachable over SFTP")]
            if imageBytes == nil {
                findings.append(
                    .warn(target.name, "there is no image \(target.image) yet", fix: "imgbackup init \(target.name)"))
            }
            guard let available else {
                findings.append(.ok(target.name, "the remote does not report its free space"))
                return findings
            }
            let free = "\(ByteSize.format(available)) free"
            if available < RemoteFreeSpace.nearlyFull {
                findings.append(
                    .fail(
                        target.name, .remote, "the remote filesystem is full (\(free))",
                        fix: "free space on the backup host"))
            } else if let size = (imageBytes ?? target.size?.bytes), available < size {
                // SFTP cannot tell how much of a sparse image is allocated: it may grow to its full size.
                findings.append(
                    .warn(
                        target.name, "\(free) on the remote, and the image may grow to \(ByteSize.format(size))",
                        fix: "free space there, or run imgbackup trim \(target.name) regularly"))
            } else {
                findings.append(.ok(target.name, "\(free) on the remote"))
            }
            return findings
        }
    }
}

extension DoctorOperation {
    /// Doctor connects where the bridge would, so a wrong command, a stopped
    /// server or a refused key shows up here and not at 3 a.m.
    func nbd(_ target: Target) async -> [DoctorFinding] {
        switch await system.lookAtNBD(target) {
        case .failed(let why):
            let fix: String
            switch target.nbd {
            case .uri(let uri)?: fix = "check that an NBD server answers at \(uri) and exports the image"
            default:
                fix =
                    "check [target.\(target.name).nbd] command: it must run on the backup host and serve \(target.image) (try it over ssh -p \(target.port) \(target.remote.sshDestination))"
            }
            return [.fail(target.name, .remote, "cannot connect to the NBD export: \(why)", fix: fix)]
        case .connected(let size, let canTrim):
            var findings: [DoctorFinding] = [.ok(target.name, "NBD export connected (\(ByteSize.format(size)))")]
            if !canTrim {
                findings.append(
                    .warn(
                        target.name, "the NBD export does not take trim: imgbackup trim cannot shrink the remote file",
                        fix: "nbdkit's file plugin trims; nbd-server needs trim = true in the export's section"))
            }
            return findings
        }
    }
}

extension DoctorOperation {
    /// The bucket answers to these credentials, the image is there (or init
    /// is next), nbdkit's S3 plugin is installed, and whether the store
    /// makes the lock atomic.
    func s3(_ target: Target) async -> [DoctorFinding] {
        let place = target.s3?.description ?? target.name
        switch await system.lookAtS3(target) {
        case .failed(let message, let hint):
            return [.fail(target.name, .remote, message, fix: hint ?? "check the [target.\(target.name).s3] table")]
        case .reachable(let metadata, let conditionalWrites, let pluginInstalled):
            var findings: [DoctorFinding] = [.ok(target.name, "the bucket of \(place) answers")]
            if let metadata {
                findings.append(
                    .ok(
                        target.name,
                        "image \(place): \(ByteSize.format(metadata.size)) in objects of \(ByteSize.format(metadata.objectSize))"
                    ))
            } else {
                findings.append(
                    .warn(target.name, "there is no image at \(place) yet", fix: "imgbackup init \(target.name)"))
            }
            switch conditionalWrites {
            case true?:
                findings.append(.ok(target.name, "the store refuses a second create: the lock object is atomic"))
            case false?:
                findings.append(
                    .warn(
                        target.name,
                        "the store ignores If-None-Match: two machines opening \(place) within one request of each other could both take its lock",
                        fix: "open an image from one machine at a time (docs/usage.md, \"The remote lock\")"))
            case nil: break
            }
            if !pluginInstalled {
                findings.append(
                    .fail(
                        target.name, .system, "nbdkit's S3 plugin is not installed",
                        fix: "apt-get install nbdkit-plugin-python python3-boto3"))
            }
            return findings
        }
    }
}

extension DoctorOperation {
    /// What an earlier command left up: `run` and `trim` clear it by
    /// themselves, but a person's `open` left behind blocks every run.
    func layers(_ target: Target) -> [DoctorFinding] {
        switch system.lookAtLayers(target) {
        case .nothingUp:
            return [.ok(target.name, "nothing of this target is up on this machine")]
        case .inUse(let operation, let pid):
            return [.ok(target.name, "open: '\(operation)' (pid \(pid)) has it up")]
        case .unreadableRecord(let message, let hint):
            return [.fail(target.name, .invalidState, message, fix: hint)]
        case .openByHand(let mountPoint):
            return [
                .warn(
                    target.name, "open at \(mountPoint) (imgbackup open): runs refuse it (exit 4) until it is closed",
                    fix: "imgbackup close \(target.name) when done")
            ]
        case .leftUp(let by, let layers):
            let what = layers.isEmpty ? "a state record with nothing up" : layers.joined(separator: ", ")
            return [
                .warn(
                    target.name,
                    "left up\(by.map { " by \($0), which is no longer running" } ?? " without a state record"): \(what)",
                    fix: "imgbackup close \(target.name)")
            ]
        }
    }
}

extension DoctorOperation {
    /// Each host of ssh:// sources, logged in to as the run would, and the
    /// source paths on it.
    func sources(_ target: Target) async -> [DoctorFinding] {
        guard let copy = target.copy else { return [] }
        var findings: [DoctorFinding] = []
        for host in copy.sourceHosts {
            let paths = copy.parsedSources.compactMap { source -> String? in
                if case .remote(host, let path) = source { return path }
                return nil
            }
            let place = "the source host \(host.location.sshDestination) port \(host.port)"
            switch await system.lookAtSource(host, paths: paths, copy: copy) {
            case .unreachable(let why):
                findings.append(
                    .fail(
                        target.name, .remote, "cannot reach \(place) over SFTP: \(why)",
                        fix:
                            "check the ssh:// source, source_identity_file and source_ssh_options; try: ssh -p \(host.port) \(host.location.sshDestination)"
                    ))
            case .reachable(let missing):
                findings.append(.ok(target.name, "\(place) reachable over SFTP"))
                for path in missing {
                    findings.append(
                        .fail(
                            target.name, .copyFailed, "the source \(path) is not on \(host.host)",
                            fix: "fix [target.\(target.name).copy] sources, or create it there"))
                }
            }
        }
        return findings
    }
}

#if canImport(Glibc)
    import Glibc
#endif
