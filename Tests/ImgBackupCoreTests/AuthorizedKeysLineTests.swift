import Foundation
import Testing

@testable import ImgBackupCore

/// The line's text, and its forced command run by a real /bin/sh the way
/// sshd runs it (`sh -c COMMAND` with SSH_ORIGINAL_COMMAND set). The SFTP
/// branch needs user namespaces and sshd: tests/e2e/test_authorized_keys.py.
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
    static func dispatch(_ command: String, request: String) throws -> (status: Int32, stdout: String, stderr: String) {
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", command]
        shell.environment = ["SSH_ORIGINAL_COMMAND": request, "PATH": "/usr/bin:/bin"]
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
        #expect(command.contains("'/srv/backups/laptop' '/usr/lib/openssh/sftp-server'"))
    }

    @Test func anyOtherRequestIsRefusedAndNeverRun() throws {
        let command = try Self.forcedCommand(of: AuthorizedKeysLine(target: Self.target(), publicKey: Self.publicKey).render())
        for request in ["id", "", "cat /etc/passwd", "echo ran; exit 0", "nbdkit --single file /etc/shadow"] {
            let result = try Self.dispatch(command, request: request)
            #expect(result.status == 1, "\(request)")
            #expect(result.stdout == "", "\(request)")
            #expect(result.stderr == "imgbackup: this key of target 'laptop' only serves its image's SFTP and NBD export\n")
        }
    }

    /// The NBD branch runs the configured argv when the request is exactly
    /// what imgbackup sends, whatever quotes and shell syntax its words hold;
    /// a request one byte off is refused.
    @Test func theExactNBDCommandRunsAndNothingNearIt() throws {
        let argv = ["printf", "%s|", "it's", "$(id)", "a \"quoted\" word", "back\\slash"]
        let target = try Self.target(nbd: argv)
        let command = try Self.forcedCommand(of: AuthorizedKeysLine(target: target, publicKey: Self.publicKey).render())
        let sent = NBDEndpointBuilder.remoteCommandLine(argv)

        let exact = try Self.dispatch(command, request: sent)
        #expect(exact.status == 0)
        #expect(exact.stdout == "it's|$(id)|a \"quoted\" word|back\\slash|")

        for near in [sent + " ", " " + sent, sent + "; id", "printf '%s|' 'it'\\''s'"] {
            let result = try Self.dispatch(command, request: near)
            #expect(result.status == 1, "\(near)")
            #expect(result.stdout == "", "\(near)")
        }
    }

    @Test func aLineBreakIsRefused() throws {
        #expect(throws: ImgBackupError.self) {
            try AuthorizedKeysLine(target: Self.target(nbd: ["nbdkit", "file", "/srv/a\nb.img"]), publicKey: Self.publicKey)
                .render()
        }
        #expect(throws: ImgBackupError.self) {
            try AuthorizedKeysLine(target: Self.target(), publicKey: Self.publicKey + "\nssh-ed25519 AAAA other").render()
        }
    }

    @Test func theSandboxRootNeverCoversTheBackupDirectory() {
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: "/srv/backups") == "mnt")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: "/mnt/backups") == "tmp")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: "/mnt") == "tmp")
        #expect(AuthorizedKeysLine.scratchRoot(avoiding: "/mntx/backups") == "mnt")
    }
}
