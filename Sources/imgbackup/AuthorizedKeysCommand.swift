import ArgumentParser
import Foundation
import ImgBackupCore

struct AuthorizedKeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authorized-keys",
        abstract: "Print the authorized_keys line the remote needs for a target's ssh key.",
        discussion: """
            The line is `restrict` plus a forced command: an SFTP request gets sftp-server \
            confined to the target's remote directory (an unprivileged namespace that holds \
            only that directory and a read-only /usr), the target's [nbd] command runs \
            exactly as configured, and anything else is refused. Install it for a dedicated \
            user on the backup host (docs/remote-setup.md).
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("The public key to allow (default: identity_file with .pub).", valueName: "FILE"))
    var publicKey: String?

    @Option(help: ArgumentHelp("sftp-server's path on the remote.", valueName: "PATH"))
    var sftpServer: String = AuthorizedKeysLine.debianSFTPServer

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    func run() throws {
        let config = try global.load()
        let target = try config.target(named: target)
        guard let path = publicKey ?? target.identityFile.map({ $0 + ".pub" }) else {
            throw ImgBackupError(
                .config, "no public key for target '\(target.name)': it has no identity_file",
                hint: "pass --public-key FILE")
        }
        guard let key = try? String(contentsOfFile: path, encoding: .utf8), !key.isEmpty else {
            throw ImgBackupError(
                .config, "failed to read the public key \(path)", hint: "pass --public-key FILE, or ssh-keygen -y -f KEY > \(path)")
        }
        print(try AuthorizedKeysLine(target: target, publicKey: key, sftpServer: sftpServer).render())
    }
}
