import Foundation
import ImgBackupOS
import Logging
import Testing

@testable import ImgBackupCore

/// Pull backups: ssh:// sources in the config, the source host's read-only
/// mount, and what rsync and borg make of pulled paths (with the real tools,
/// a plain directory standing in for the sshfs mount). The real source host,
/// mount and hang: e2e/test_pull.py.
@Suite(.serialized) struct PullSourceTests {
    @Test(arguments: [
        (
            "ssh://backup@db1:2222/etc",
            CopySource.remote(SourceHost(user: "backup", host: "db1", port: 2222), path: "/etc")
        ),
        ("ssh://db1/srv/data/", CopySource.remote(SourceHost(user: nil, host: "db1", port: 22), path: "/srv/data/")),
        ("ssh://root@[::1]:2200/x", CopySource.remote(SourceHost(user: "root", host: "::1", port: 2200), path: "/x")),
        ("/home", CopySource.local("/home")),
    ])
    func sourcesParse(text: String, expected: CopySource) throws {
        #expect(try CopySource.parse(text).get() == expected)
    }

    @Test(arguments: [
        "ssh://db1", "ssh://db1:99999/x", "ssh://@db1/x", "ssh://db1:port/x", "ssh://-oProxyCommand=x/y", "etc",
        "ssh:///x",
    ])
    func badSourcesAreRefused(text: String) {
        #expect(throws: RemoteLocation.ParseFailure.self) { try CopySource.parse(text).get() }
    }

    static let target = "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n"

    @Test func theConfigNamesTheSourceHostsAndTheirLogin() throws {
        let config = try ConfigLoader.parse(
            Self.target + """
                [target.t.copy]
                method = "rsync"
                sources = ["/etc", "ssh://backup@db1:2222/etc", "ssh://backup@db1:2222/var/lib/app", "ssh://web1/srv"]
                exclude = ["/home/*/.cache", "*.tmp"]
                source_identity_file = "/root/.ssh/pull_ed25519"
                source_ssh_options = ["UserKnownHostsFile=/etc/imgbackup/known_hosts"]
                """, path: "c.toml")
        let copy = try #require(try config.target(named: "t").copy)
        #expect(
            copy.sourceHosts == [
                SourceHost(user: "backup", host: "db1", port: 2222), SourceHost(user: nil, host: "web1"),
            ])
        #expect(copy.sourceIdentityFile == "/root/.ssh/pull_ed25519")

        let endpoint = SSHFSEndpoint(source: copy.sourceHosts[0], copy: copy)
        let arguments = SSHFSLayer.arguments(for: endpoint, mountPoint: "/run/imgbackup/t/sources/db1")
        #expect(Array(arguments.prefix(4)) == ["backup@db1:/", "/run/imgbackup/t/sources/db1", "-o", "ro"])
        #expect(arguments.contains("Port=2222") && arguments.contains("IdentityFile=/root/.ssh/pull_ed25519"))
        #expect(arguments.contains("UserKnownHostsFile=/etc/imgbackup/known_hosts"))

        let paths = RuntimePaths(runtimeDirectory: "/run/imgbackup", stateDirectory: "/var/lib/imgbackup")
        var target = try config.target(named: "t")
        target.copy = copy
        // Unwound first: the source mounts sit on top of the image's stack.
        #expect(
            Array(target.possibleLayers(paths).suffix(2)) == [
                .sshfs(source: "backup@db1:/", mountPoint: "/run/imgbackup/t/sources/db1"),
                .sshfs(source: "web1:/", mountPoint: "/run/imgbackup/t/sources/web1"),
            ])
    }

    @Test(arguments: [
        (
            "method = \"btrfs-send\"\nsource_subvolume = \"/srv\"\nsources = [\"ssh://db1/etc\"]",
            "c.toml:7: target.t.copy.sources: 'ssh://db1/etc': only rsync and borg pull from other hosts"
        ),
        (
            "method = \"rsync\"\nsources = [\"ssh://a@db1/etc\", \"ssh://b@db1/srv\"]",
            "c.toml:6: target.t.copy.sources: 'db1' appears with two logins"
        ),
        (
            "method = \"rsync\"\nsources = [\"/etc\"]\nsource_identity_file = \"/k\"",
            "c.toml:7: target.t.copy.source_identity_file: is only for ssh:// sources"
        ),
        (
            "method = \"borg\"\nsources = [\"ssh://db1/etc\"]\nsource_ssh_options = [\"-oProxyCommand=x\"]",
            "c.toml:7: target.t.copy.source_ssh_options: '-oProxyCommand=x' is not an ssh option"
        ),
        (
            "method = \"rsync\"\nsources = [\"etc\"]",
            "c.toml:6: target.t.copy.sources: 'etc' must be an absolute path or ssh://"
        ),
        (
            "method = \"rsync\"\nsources = [\"ssh://db1:0/etc\"]",
            "c.toml:6: target.t.copy.sources: 'ssh://db1:0/etc': 0 is not a TCP port"
        ),
    ])
    func badPullConfigsAreRefused(copy: String, expected: String) {
        let error = #expect(throws: ImgBackupError.self) {
            try ConfigLoader.parse(Self.target + "[target.t.copy]\n" + copy + "\n", path: "c.toml")
        }
        #expect(error?.message.hasPrefix(expected) == true, "got: \(error?.message ?? "nothing")")
    }

    @Test func theSourceHostLineIsReadOnlySFTPInTheSandbox() throws {
        let line = try AuthorizedKeysLine.readOnlySource(
            publicKey: "ssh-ed25519 AAAA pull@box\n", paths: ["/etc", "/home/pull"])
        #expect(line.hasPrefix("restrict,command=\"") && line.hasSuffix("\" ssh-ed25519 AAAA pull@box"))
        #expect(line.contains("'/usr/lib/openssh/sftp-server' -R -P symlink,hardlink"))
        #expect(line.contains("/home/pull") && !line.contains("internal-sftp"))
        #expect(throws: ImgBackupError.self) {
            try AuthorizedKeysLine.readOnlySource(publicKey: "ssh-ed25519 A\nssh-ed25519 B", paths: [])
        }
    }

    /// The sandbox of the source line, run as sshd would with a probe in
    /// sftp-server's place: it sees the source paths, read-only, and nothing
    /// else of the host; a source path this host lacks is skipped.
    @Test(.enabled(if: geteuid() == 0, "the sandbox needs root for its mount namespace"))
    func theSourceHostSandboxHoldsOnlyTheSourcesReadOnly() throws {
        let source = makeScratchDirectory("pull-sandbox")
        defer { try? FileManager.default.removeItem(atPath: source) }
        try "source data\n".write(toFile: "\(source)/data.txt", atomically: false, encoding: .utf8)
        let probe = "\(source)/probe.sh"
        try """
        #!/bin/sh
        ls -a /
        cat \(source)/data.txt
        touch \(source)/new 2>/dev/null && echo wrote || echo read-only
        cat /etc/hostname 2>/dev/null || echo no-hostname

        """.write(toFile: probe, atomically: false, encoding: .utf8)
        chmod(probe, 0o755)
        let line = try AuthorizedKeysLine.readOnlySource(
            publicKey: AuthorizedKeysLineTests.publicKey, paths: [source, "/nonexistent/source"], sftpServer: probe)
        let result = try AuthorizedKeysLineTests.dispatch(
            AuthorizedKeysLineTests.forcedCommand(of: line), request: "internal-sftp")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(result.status == 0, "\(result)")
        #expect(
            lines.contains("source data") && lines.contains("read-only") && lines.contains("no-hostname"), "\(result)")
        #expect(!lines.contains("nonexistent") && !lines.contains("root") && !lines.contains("home"), "\(lines)")
        #expect(!FileManager.default.fileExists(atPath: "\(source)/new"))
    }

    /// A run's directories, with a pulled host's tree where its mount would be.
    struct Scene {
        let root: String
        let mount: String
        let environment: OperationEnvironment
        let local: String

        init() throws {
            root = makeScratchDirectory("pull")
            mount = root + "/mount"
            local = root + "/local"
            environment = OperationEnvironment(
                paths: RuntimePaths(runtimeDirectory: root + "/run", stateDirectory: root + "/state"),
                logger: Logger(label: "test"))
            let pulled = environment.paths.sourcesDirectory("t") + "/db1"
            for directory in [mount, local + "/home/alice/.cache", pulled + "/etc/app", pulled + "/home/bob/.cache"] {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            try "local".write(toFile: local + "/home/alice/notes", atomically: false, encoding: .utf8)
            try "junk".write(toFile: local + "/home/alice/.cache/junk", atomically: false, encoding: .utf8)
            try "setting = 1".write(toFile: pulled + "/etc/app/config", atomically: false, encoding: .utf8)
            try "junk".write(toFile: pulled + "/home/bob/.cache/junk", atomically: false, encoding: .utf8)
            try "bob".write(toFile: pulled + "/home/bob/notes", atomically: false, encoding: .utf8)
        }

        func context(_ method: Target.Copy.Method) -> CopyContext {
            var copy = Target.Copy(method: method)
            copy.sources = [local + "/home", "ssh://backup@db1/etc", "ssh://backup@db1/home"]
            copy.exclude = [local + "/home/*/.cache", "/home/*/.cache"]
            let target = Target(
                name: "t", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "t.img",
                key: .file("/k"),
                mountPoint: mount)
            return CopyContext(
                target: target, copy: copy, mountPoint: mount,
                now: ISO8601DateFormatter().date(from: "2026-03-01T03:00:00Z")!,
                environment: environment)
        }
    }

    @Test func rsyncLandsPulledPathsUnderTheHostsName() async throws {
        let scene = try Scene()
        defer { try? FileManager.default.removeItem(atPath: scene.root) }
        let context = scene.context(.rsync)
        #expect(
            context.excludePatterns == [
                scene.local + "/home/*/.cache", "/db1" + scene.local + "/home/*/.cache", "/home/*/.cache",
                "/db1/home/*/.cache",
            ])
        _ = try await RsyncCopy().copy(context)
        let snapshot = scene.mount + "/snapshots/2026-03-01T030000Z"
        #expect(try String(contentsOfFile: snapshot + "/db1/etc/app/config", encoding: .utf8) == "setting = 1")
        #expect(try String(contentsOfFile: snapshot + "/db1/home/bob/notes", encoding: .utf8) == "bob")
        #expect(try String(contentsOfFile: snapshot + scene.local + "/home/alice/notes", encoding: .utf8) == "local")
        // The anchored exclude holds for the local tree and the pulled one.
        #expect(!FileManager.default.fileExists(atPath: snapshot + "/db1/home/bob/.cache"))
        #expect(!FileManager.default.fileExists(atPath: snapshot + scene.local + "/home/alice/.cache"))
        #expect(!FileManager.default.fileExists(atPath: snapshot + "/run"), "the mount's own path must not show")
    }

    @Test func borgArchivesPulledPathsAsHostAndPath() async throws {
        let scene = try Scene()
        defer { try? FileManager.default.removeItem(atPath: scene.root) }
        _ = try await BorgCopy().copy(scene.context(.borg))
        let listed = try await SubprocessCommandRunner().run(
            Command(
                "borg", ["list", "--format", "{path}{NL}", scene.mount + "/borg::2026-03-01T030000Z"],
                timeout: .seconds(60),
                environment: [
                    "BORG_BASE_DIR": scene.root + "/state/t/borg", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                ]))
        let paths = Set(listed.standardOutput.split(separator: "\n").map(String.init))
        #expect(paths.contains("db1/etc/app/config") && paths.contains("db1/home/bob/notes"), "\(paths)")
        #expect(paths.contains(String((scene.local + "/home/alice/notes").dropFirst())))
        #expect(!paths.contains { $0.contains(".cache") }, "\(paths)")
        #expect(!paths.contains { $0.contains("sources") }, "the mount's own path must not show")
    }
}
