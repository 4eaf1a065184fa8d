import Foundation
import Testing

@testable import ImgBackupCore

/// The line's text, and its forced command run by a real /bin/sh the way
/// sshd runs it (`sh -c COMMAND` with SSH_ORIGINAL_COMMAND set). The SFTP
/// branch needs user namespaces and sshd: e2e/test_authorized_keys.py.
@Suite struct AuthorizedKeysLineTests {
    static let publicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO1 root@client"

    static func target(directory: String = "/srv/backups/laptop", nbd: [String]? = nil) throws -> Target {
        var target = Target(
            name: "laptop", remote: try RemoteLocation.parse("backup@host:\(directory)").get(), image: "laptop.img",
            key: .file("/k"), mountPoint: "/mnt/laptop")
        target.nbd = nbd.map { .command($0) }
        return target
    }

    /// What sshd would run: the text between `command="` and the closing quote, unescaped.
    static func forcedCommand(of line: String) throws -> String {
        let prefix = "restrict,command=\""
        #expect(line.hasPrefix(prefix))
        var command = ""
        var rest = Substring(line.dropFirst(prefix.count))
        while let character = rest.first {
            if rest.hasPrefix("\\\"") {
                command.append("\"")
                rest = rest.dropFirst(2)
            } else if character == "\"" {
                #expect(rest.dropFirst() == " " + publicKey)
                return command
            } else {
                command.append(character)
                rest = rest.dropFirst()
            }
        }
        Issue.record("the command option is not closed: \(line)")
        return command
    }

    /// Runs the forced command as sshd would for a client that asked for `request`.
    static func dispatch(_ command: String, request: String, home: String = "/nonexistent") throws -> (
        status: Int32, stdout: String, stderr: String
    ) {
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", command]
        shell.environment = ["SSH_ORIGINAL_COMMAND": request, "PATH": "/usr/bin:/bin", "HOME": home]
        let output = Pipe()
        let errors = Pipe()
        shell.standardOutput = output
        shell.standardError = errors
        shell.standardInput = FileHandle.nullDevice
        try shell.run()
        let stdout = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        shell.waitUntilExit()
        return (shell.terminationStatus, stdout, stderr)
    }

    @Test func oneRestrictedLineForTheKey() throws {
        let line = try AuthorizedKeysLine(target: Self.target(), publicKey: Self.publicKey + "\n").render()
        #expect(!line.contains("\n"))
        #expect(line.hasPrefix("restrict,command=\""))
        #expect(line.hasSuffix("\" " + Self.publicKey))
        let command = try Self.forcedCommand(of: line)
        #expect(command.contains("unshare --user --map-root-user --mount"))
        #expect(command.contains("'/usr/lib/openssh/sftp-server' -d '/srv/backups/laptop' -P symlink,hardlink ;;"))
    }

    @Test func anyOtherRequestIsRefusedAndNeverRun() throws {
        let command = try Self.forcedCommand(
            of: AuthorizedKeysLine(target: Self.target(), publicKey: Self.publicKey).render())
        for request in ["id", "", "cat /etc/passwd", "echo ran; exit 0", "nbdkit --single file /etc/shadow"] {
            let result = try Self.dispatch(command, request: request)
            #expect(result.status == 1, "\(request)")
            #expect(result.stdout == "", "\(request)")
            #expect(
                result.stderr == "imgbackup: this key of target 'laptop' only serves its image's SFTP and NBD export\n")
        }
    }

    /// The NBD branch runs the configured argv, in the sandbox, when the
    /// request is exactly what imgbackup sends, whatever quotes and shell
    /// syntax its words hold; a request one byte off is refused. The sandbox
    /// needs mount namespaces: root (as in CI).
    @Test(.enabled(if: geteuid() == 0, "the sandbox needs root for its mount namespace"))
    func theExactNBDCommandRunsInTheSandboxAndNothingNearIt() throws {
        let directory = makeScratchDirectory("nbd-sandbox")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let argv = ["printf", "%s|", "it's", "$(id)", "a \"quoted\" word", "back\\slash"]
        let command = try Self.forcedCommand(
            of: AuthorizedKeysLine(target: Self.target(directory: directory, nbd: argv), publicKey: Self.publicKey)
                .render())
        let sent = RemoteCommandLine.of(argv)

        let exact = try Self.dispatch(command, request: sent)
        #expect(exact.status == 0, "\(exact.stderr)")
        #expect(exact.stdout == "it's|$(id)|a \"quoted\" word|back\\slash|")

        for near in [sent + " ", " " + sent, sent + "; id", "printf '%s|' 'it'\\''s'"] {
            let result = try Self.dispatch(command, request: near)
            #expect(result.status == 1, "\(near)")
            #expect(result.stdout == "", "\(near)")
        }
    }

    /// What the NBD command can see: the backup directory, /usr and the
    /// sandbox's own few files; not the host's /etc, not a sibling directory,
    /// not where a symlink in the directory points.
    @Test(.enabled(if: geteuid() == 0, "the sandbox needs root for its mount namespace"))
    func theNBDCommandSeesOnlyTheBackupDirectory() throws {
        let parent = makeScratchDirectory("nbd-sandbox")
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let directory = "\(parent)/laptop"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        try "neighbour's\n".write(toFile: "\(parent)/neighbour.img", atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: "\(directory)/laptop.img", withDestinationPath: "\(parent)/neighbour.img")
        let probe =
            "ls -a /; cat /etc/passwd; ls \(directory); cat \(directory)/laptop.img || echo unreadable; cat /etc/hostname || echo no-hostname"
        let argv = ["sh", "-c", probe]
        let command = try Self.forcedCommand(
            of: AuthorizedKeysLine(target: Self.target(directory: directory, nbd: argv), publicKey: Self.publicKey)
                .render())
        let result = try Self.dispatch(command, request: RemoteCommandLine.of(argv))
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("imgbackup:x:0:0:imgbackup sftp:/:/nonexistent"), "\(result)")
        #expect(
            lines.contains("laptop.img") && lines.contains("unreadable") && lines.contains("no-hostname"), "\(result)")
        #expect(!result.stdout.contains("neighbour's"))
        #expect(!lines.contains("root:x:0:0:root:/root:/bin/bash"))
    }

    @Test func aDirectoryOfSlashOrWithDotsIsRefused() throws {
        for directory in ["/", "/srv/../root", "/srv/./backups"] {
            let error = #expect(throws: ImgBackupError.self) {
                try AuthorizedKeysLine(target: Self.target(directory: directory), publicKey: Self.publicKey).render()
            }
            #expect(error?.message.contains("must be a directory of its own") == true, "\(directory)")
        }
    }

    /// Run with HOME set the way sshd sets it: a directory that holds the
    /// login's home or a .ssh directory is never served.
    @Test func aDirectoryHoldingTheHomeOrASSHDirectoryIsNotServed() throws {
        let directory = makeScratchDirectory("home")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let command = try Self.forcedCommand(
            of: AuthorizedKeysLine(target: Self.target(directory: directory), publicKey: Self.publicKey).render())
        let home = try Self.dispatch(command, request: "/usr/lib/openssh/sftp-server", home: directory + "/user")
        #expect(home.status == 1 && home.stderr.contains("it holds the login's home directory"), "\(home)")
        try FileManager.default.createDirectory(atPath: directory + "/.ssh", withIntermediateDirectories: false)
        let ssh = try Self.dispatch(command, request: "/usr/lib/openssh/sftp-server", home: "/nonexistent")
        #expect(ssh.status == 1 && ssh.stderr.contains("it holds a .ssh directory"), "\(ssh)")
    }

    @Test func aLineBreakIsRefused() throws {
        #expect(throws: ImgBackupError.self) {
            try AuthorizedKeysLine(
                target: Self.target(nbd: ["nbdkit", "file", "/srv/a\nb.img"]), publicKey: Self.publicKey
            )
            .render()
        }
        #expect(throws: ImgBackupError.self) {
            try AuthorizedKeysLine(target: Self.target(), publicKey: Self.publicKey + "\nssh-ed25519 AAAA other")
                .render()
        }
    }

    @Test func theSandboxRootNeverCoversABoundPath() {
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: ["/srv/backups"]) == "mnt")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: ["/mnt/backups"]) == "tmp")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: ["/mnt"]) == "tmp")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: ["/mntx/backups"]) == "mnt")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: ["/mnt/a", "/tmp/b", "/home/c"]) == "media")
    }
}
