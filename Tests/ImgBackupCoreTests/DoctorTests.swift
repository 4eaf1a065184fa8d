import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

/// doctor's decisions on made-up machines; the real machine and remote:
/// e2e/test_doctor.py.
@Suite struct DoctorTests {
    struct FakeSystem: SystemInspecting {
        var isRoot = true
        var files: [String: String] = ["/proc/devices": "Block devices:\n254 device-mapper\n"]
        var present: Set<String> = ["/sys/module/dm_crypt", "/dev/loop-control", "/dev/fuse"]
        var mountPoints: Set<String> = ["/sys/fs/fuse/connections"]
        var missingPrograms: Set<String> = []
        var remote = RemoteLook.reachable(available: 10 << 30, imageBytes: 1 << 30)
        var nbd = NBDLook.connected(size: 2 << 30, canTrim: true)
        var source = SourceLook.reachable(missing: [])

        func fileExists(_ path: String) -> Bool { present.contains(path) || files[path] != nil }
        func fileText(_ path: String) -> String? { files[path] }
        func isMountPoint(_ path: String) -> Bool { mountPoints.contains(path) }
        func locate(_ program: String) -> String? { missingPrograms.contains(program) ? nil : "/usr/bin/\(program)" }
        func moduleAvailable(_ module: String) async -> Bool { false }
        var sshfsHelp: String? = "    -o contain_symlinks    reject absolute symlinks and symlinks containing ..\n"
        func helpText(of program: String) async -> String? { program == "sshfs" ? sshfsHelp : nil }
        func lookAtRemote(_ target: Target) async -> RemoteLook { remote }
        func lookAtNBD(_ target: Target) async -> NBDLook { nbd }
        func lookAtSource(_ host: SourceHost, paths: [String], copy: Target.Copy) async -> SourceLook { source }
        var layers = LayersLook.nothingUp
        func lookAtLayers(_ target: Target) -> LayersLook { layers }
        var s3 = S3Look.reachable(
            metadata: S3ImageMetadata(size: 1 << 30, objectSize: 1 << 20), conditionalWrites: true,
            pluginInstalled: true)
        func lookAtS3(_ target: Target) async -> S3Look { s3 }
    }

    static func target(configure: (inout Target) -> Void = { _ in }) throws -> Target {
        var target = Target(
            name: "offsite", remote: try RemoteLocation.parse("backup@host:/srv/laptop").get(), image: "laptop.img",
            key: .file("/etc/imgbackup/offsite.key"), mountPoint: "/mnt/offsite")
        target.size = ByteSize(bytes: 2 << 30)
        target.copy = Target.Copy(method: .rsync)
        configure(&target)
        return target
    }

    static func findings(_ system: FakeSystem, _ target: Target, key: ImgBackupError? = nil) async -> [DoctorFinding] {
        await DoctorOperation(targets: [target], system: system).run { _ in key }
    }

    @Test func aHealthyMachineAndTargetPass() async throws {
        let findings = await Self.findings(FakeSystem(), try Self.target())
        #expect(findings.allSatisfy { $0.level == .ok }, "\(findings)")
        #expect(DoctorOperation.exitStatus(findings) == 0)
        #expect(findings.map(\.description).contains("ok    offsite: 10 GiB free on the remote"))
        #expect(
            findings.map(\.description).contains(
                "ok    offsite: programs: ssh, sshfs, fusermount3, mkfs.ext4, e2fsck, resize2fs, rsync"))
    }

    @Test func eachMissingPieceFailsWithItsFixAndTheRunsExitStatus() async throws {
        var system = FakeSystem()
        system.missingPrograms = ["rsync"]
        var findings = await Self.findings(system, try Self.target())
        #expect(
            findings.filter { $0.level == .fail }.map(\.description) == [
                "FAIL  offsite: rsync is not installed -> apt-get install rsync"
            ])
        #expect(DoctorOperation.exitStatus(findings) == 7)

        system = FakeSystem()
        system.files["/proc/devices"] = "Block devices:\n7 loop\n"
        system.present.remove("/sys/module/dm_crypt")
        findings = await Self.findings(system, try Self.target())
        #expect(
            findings.filter { $0.level == .fail }.map(\.message) == [
                "the kernel has no device-mapper", "the kernel has no dm-crypt",
            ])

        let loose = ImgBackupError(
            .badKey, "refusing key file /k: group or others can access it (mode 644)", hint: "chmod 600 /k")
        findings = await Self.findings(FakeSystem(), try Self.target(), key: loose)
        #expect(
            findings.contains {
                $0.description
                    == "FAIL  offsite: refusing key file /k: group or others can access it (mode 644) -> chmod 600 /k"
            })
        #expect(DoctorOperation.exitStatus(findings) == 5)

        system = FakeSystem()
        system.remote = .unreachable("ssh: connect to host host port 22: Connection refused")
        findings = await Self.findings(system, try Self.target())
        #expect(DoctorOperation.exitStatus(findings) == 6)
        #expect(
            findings.contains {
                $0.level == .fail && $0.message.hasSuffix("Connection refused")
                    && $0.fix?.contains("ssh -p 22 backup@host") == true
            })
    }

    @Test func layersLeftUpByADeadCommandAreReportedWithTheirFix() async throws {
        var system = FakeSystem()
        system.layers = .leftUp(by: "'open' (pid 4242)", layers: ["dm-crypt mapping /dev/mapper/imgbackup-offsite"])
        let findings = await Self.findings(system, try Self.target())
        #expect(
            findings.map(\.description).contains(
                "WARN  offsite: left up by 'open' (pid 4242), which is no longer running: dm-crypt mapping /dev/mapper/imgbackup-offsite -> imgbackup close offsite"
            ))
        #expect(DoctorOperation.exitStatus(findings) == 0)
        system.layers = .openByHand(mountPoint: "/mnt/offsite")
        #expect(
            await Self.findings(system, try Self.target()).map(\.description).contains(
                "WARN  offsite: open at /mnt/offsite (imgbackup open): runs refuse it (exit 4) until it is closed -> imgbackup close offsite when done"
            ))
        // A record open would refuse to read: doctor fails as open would (exit 8).
        system.layers = .unreadableRecord(
            message: "failed to read state record /run/x", hint: "check")
        let unreadable = await Self.findings(system, try Self.target())
        #expect(unreadable.map(\.description).contains("FAIL  offsite: failed to read state record /run/x -> check"))
        #expect(DoctorOperation.exitStatus(unreadable) == 8)
        system.layers = .inUse(operation: "run", pid: 7)
        #expect(
            await Self.findings(system, try Self.target()).map(\.description).contains(
                "ok    offsite: open: 'run' (pid 7) has it up"))
    }

    @Test func notRootNeedsFuseConfAndSaysSo() async throws {
        var system = FakeSystem()
        system.isRoot = false
        let findings = await Self.findings(system, try Self.target())
        #expect(findings.contains { $0.message.hasPrefix("not running as root") })
        #expect(findings.contains { $0.fix == "echo user_allow_other >> /etc/fuse.conf" })
        system.files["/etc/fuse.conf"] = "# comment\nuser_allow_other\n"
        #expect(!(await Self.findings(system, try Self.target())).contains { $0.message.contains("fuse.conf") })
    }

    @Test func remoteSpaceWarnsBeforeItBlocks() async throws {
        var system = FakeSystem()
        system.remote = .reachable(available: 1 << 30, imageBytes: nil)
        var findings = await Self.findings(system, try Self.target())
        #expect(findings.contains { $0.level == .warn && $0.fix == "imgbackup init offsite" })
        #expect(
            findings.contains {
                $0.level == .warn && $0.message == "1 GiB free on the remote, and the image may grow to 2 GiB"
            })
        #expect(DoctorOperation.exitStatus(findings) == 0)

        system.remote = .reachable(available: 1 << 20, imageBytes: 2 << 30)
        findings = await Self.findings(system, try Self.target())
        #expect(findings.contains { $0.level == .fail && $0.message == "the remote filesystem is full (1 MiB free)" })
        #expect(DoctorOperation.exitStatus(findings) == 6)

        system.mountPoints = []
        system.remote = .reachable(available: nil, imageBytes: 2 << 30)
        findings = await Self.findings(system, try Self.target())
        #expect(
            findings.contains { $0.level == .warn && $0.fix == "mount -t fusectl fusectl /sys/fs/fuse/connections" })
        #expect(DoctorOperation.exitStatus(findings) == 0)
    }

    @Test func theNBDExportIsLookedAtOnlyWhereOneIsConfigured() async throws {
        var findings = await Self.findings(FakeSystem(), try Self.target())
        #expect(!findings.contains { $0.message.contains("NBD export") })

        let nbdTarget = try Self.target {
            $0.transport = .nbd
            $0.nbd = .command(["nbdkit", "--single", "file", "/srv/laptop/laptop.img"])
        }
        findings = await Self.findings(FakeSystem(), nbdTarget)
        #expect(findings.map(\.description).contains("ok    offsite: NBD export connected (2 GiB)"))
        #expect(DoctorOperation.exitStatus(findings) == 0)

        var system = FakeSystem()
        system.nbd = .connected(size: 2 << 30, canTrim: false)
        findings = await Self.findings(system, nbdTarget)
        #expect(findings.contains { $0.level == .warn && $0.message.hasPrefix("the NBD export does not take trim") })
        #expect(DoctorOperation.exitStatus(findings) == 0)

        system.nbd = .failed("nbd_connect_command: server disconnected unexpectedly")
        findings = await Self.findings(system, nbdTarget)
        #expect(DoctorOperation.exitStatus(findings) == 6)
        #expect(
            findings.filter { $0.level == .fail }.map(\.description) == [
                "FAIL  offsite: cannot connect to the NBD export: nbd_connect_command: server disconnected unexpectedly"
                    + " -> check [target.offsite.nbd] command: it must run on the backup host and serve laptop.img"
                    + " (try it over ssh -p 22 backup@host)"
            ])

        findings = await Self.findings(system, try Self.target { $0.nbd = .uri("nbd://nas/laptop") })
        #expect(
            findings.contains { $0.fix == "check that an NBD server answers at nbd://nas/laptop and exports the image" }
        )
    }

    @Test func theProgramsFollowTheConfig() throws {
        let target = try Self.target {
            $0.filesystem = .btrfs
            $0.copy = Target.Copy(method: .borg)
            $0.nbd = .command(["nbdkit", "file", "/x"])
            $0.key = .command(["pass", "show", "offsite"])
        }
        #expect(
            DoctorOperation.programsNeeded(by: target) == [
                "ssh", "sshfs", "fusermount3", "mkfs.btrfs", "btrfs", "fstrim", "borg", "pass",
            ])
    }

    @Test func sourceHostsAreLookedAtWithTheirPaths() async throws {
        let pulling = try Self.target {
            $0.copy?.sources = ["/etc", "ssh://backup@db1:2222/srv/data", "ssh://backup@db1:2222/etc"]
        }
        var findings = await Self.findings(FakeSystem(), pulling)
        #expect(
            findings.map(\.description).contains(
                "ok    offsite: the source host backup@db1 port 2222 reachable over SFTP"))
        #expect(DoctorOperation.exitStatus(findings) == 0)

        var system = FakeSystem()
        system.source = .reachable(missing: ["/srv/data"])
        findings = await Self.findings(system, pulling)
        #expect(
            findings.filter { $0.level == .fail }.map(\.description) == [
                "FAIL  offsite: the source /srv/data is not on db1 -> fix [target.offsite.copy] sources, or create it there"
            ])
        #expect(DoctorOperation.exitStatus(findings) == 2)

        system.source = .unreachable("Permission denied (publickey).")
        findings = await Self.findings(system, pulling)
        #expect(DoctorOperation.exitStatus(findings) == 6)
        #expect(findings.contains { $0.level == .fail && $0.fix?.hasSuffix("try: ssh -p 2222 backup@db1") == true })

        let listing = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(0),
            standardOutput:
                "sftp> pwd\nRemote working directory: /root\nsftp> -ls -ln \"/etc\"\n-rw-r--r-- 1 0 0 12 Nov 22 22:00 hosts\n",
            standardError: "Can't ls: \"/srv/data\" not found\n")
        #expect(
            SystemInspector.parseSource(listing, paths: ["/etc", "/srv/data"]) == .reachable(missing: ["/srv/data"]))
        let refused = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(255), standardOutput: "",
            standardError: "backup@db1: Permission denied (publickey).\r\nConnection closed\n")
        #expect(
            SystemInspector.parseSource(refused, paths: ["/etc"])
                == .unreachable("backup@db1: Permission denied (publickey)."))
    }

    @Test func sftpAnswersAreRead() {
        let df = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(0),
            standardOutput: """
                sftp> cd "/srv/laptop"
                sftp> pwd
                Remote working directory: /srv/laptop
                sftp> -df .
                        Size         Used        Avail       (root)    %Capacity
                    20466256     14246736      5154560      6219520          69%
                sftp> -ls -ln "laptop.img"
                -rw-------    ? 1000     1000     2147483648 Nov 22 22:00 laptop.img

                """, standardError: "")
        #expect(
            SystemInspector.parse(df, image: "laptop.img")
                == .reachable(available: 5_154_560 * 1024, imageBytes: 2 << 30))

        let noImage = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(0),
            standardOutput:
                "Remote working directory: /srv/laptop\nsftp> -df .\n        Size         Used        Avail       (root)    %Capacity\n 100 50 40 50 50%\n",
            standardError: "Can't ls: \"/srv/laptop/laptop.img\" not found\n")
        #expect(
            SystemInspector.parse(noImage, image: "laptop.img") == .reachable(available: 40 * 1024, imageBytes: nil))

        // An SFTP-only host without the statvfs extension (or refusing it):
        // reachable, free space unknown.
        let noStatvfs = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(0),
            standardOutput: """
                sftp> cd "/srv/laptop"
                sftp> pwd
                Remote working directory: /srv/laptop
                sftp> -df .
                sftp> -ls -ln "laptop.img"
                -rw-------    ? 1000     1000     2147483648 Nov 22 22:00 laptop.img

                """, standardError: "Server does not support the statvfs@openssh.com extension\n")
        #expect(
            SystemInspector.parse(noStatvfs, image: "laptop.img") == .reachable(available: nil, imageBytes: 2 << 30))

        let noDirectory = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(1), standardOutput: "sftp> cd \"/srv/nope\"\n",
            standardError: "stat remote: No such file or directory\n")
        #expect(
            SystemInspector.parse(noDirectory, image: "x.img") == .noDirectory("stat remote: No such file or directory")
        )

        let refused = CommandResult(
            executable: "/usr/bin/sftp", termination: .exited(255), standardOutput: "",
            standardError: "ssh: connect to host h port 22: Connection refused\nConnection closed\n")
        #expect(
            SystemInspector.parse(refused, image: "x.img")
                == .unreachable("ssh: connect to host h port 22: Connection refused"))
        #expect(SystemInspector.sftpQuoted(#"/srv/a "b"\c"#) == #""/srv/a \"b\"\\c""#)
    }

    static func s3Target() throws -> Target {
        try target { target in
            target.transport = .s3
            target.s3 = S3Location(
                endpoint: "https://s3.example", bucket: "backups", prefix: "laptop", credentials: .file("/etc/c"))
        }
    }

    @Test func anS3TargetIsLookedAtInItsBucketNotOverSFTP() async throws {
        var system = FakeSystem()
        system.remote = .unreachable("must not be asked")
        system.missingPrograms = ["ssh", "sshfs"]
        let findings = await Self.findings(system, try Self.s3Target())
        #expect(findings.allSatisfy { $0.level == .ok }, "\(findings)")
        #expect(
            findings.map(\.description).contains("ok    offsite: image s3://backups/laptop: 1 GiB in objects of 1 MiB"))

        system.s3 = .reachable(metadata: nil, conditionalWrites: false, pluginInstalled: false)
        let gaps = await Self.findings(system, try Self.s3Target())
        #expect(gaps.contains { $0.level == .warn && $0.description.contains("ignores If-None-Match") })
        #expect(gaps.contains { $0.level == .warn && $0.description.contains("no image at s3://backups/laptop") })
        #expect(gaps.contains { $0.level == .fail && $0.description.contains("S3 plugin is not installed") })

        system.s3 = .failed(message: "the S3 store refused to read backups/laptop.imgbackup: 403", hint: "check")
        let refused = await Self.findings(system, try Self.s3Target())
        #expect(DoctorOperation.exitStatus(refused) == ImgBackupError.Code.remote.exitStatus)
    }
}
