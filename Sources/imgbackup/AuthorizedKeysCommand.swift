import ArgumentParser
import Foundation
import ImgBackupCore

struct AuthorizedKeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authorized-keys",
        abstract: "Print the authorized_keys line the remote needs for a target's ssh key.",
        discussion: """
            The line is `restrict` plus a forced command: an SFTP request gets sftp-server \
            (no symlinks, no hard links), the target's [nbd] command runs exactly as \
            configured, and anything else is refused. Both run in a namespace that holds \
            only the target's remote directory and a read-only /usr. Install it for a \
            dedicated user on the backup host (docs/remote-setup.md).

            With --source, the line for the hosts the target pulls ssh:// sources from, for \
            the key in source_identity_file: read-only SFTP in the same kind of namespace, \
            holding only the configured source paths, read-only, and nothing else. Install \
            it for the user the ssh:// sources log in as.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("The public key to allow (default: identity_file with .pub).", valueName: "FILE"))
    var publicKey: String?

    @Flag(help: "Print the read-only line for the source hosts instead (key: source_identity_file with .pub).")
    var source = false

    @Option(help: ArgumentHelp("sftp-server's path on the remote.", valueName: "PATH"))
    var sftpServer: String = AuthorizedKeysLine.debianSFTPServer

    @Argument(help: "The target, a [target.NAME] table of the config.")
    var target: String

    func run() throws {
        let config = try global.load()
        let target = try config.target(named: target)
        if source && (target.copy?.sourceHosts ?? []).isEmpty {
            throw ImgBackupError(
                .config, "target '\(target.name)' pulls from no other host: none of its sources is ssh://",
                hint: "drop --source, or add an ssh://[user@]host/path source")
        }
        let keyName = source ? "source_identity_file" : "identity_file"
        guard
            let path = publicKey
                ?? (source ? target.copy?.sourceIdentityFile : target.identityFile).map({ $0 + ".pub" })
        else {
            throw ImgBackupError(
                .config, "no public key for target '\(target.name)': it has no \(keyName)",
                hint: "pass --public-key FILE")
        }
        guard let key = try? String(contentsOfFile: path, encoding: .utf8), !key.isEmpty else {
            throw ImgBackupError(
                .config, "failed to read the public key \(path)",
                hint: "pass --public-key FILE, or ssh-keygen -y -f KEY > \(path)")
        }
        if source {
            print(
                try AuthorizedKeysLine.readOnlySource(
                    publicKey: key, paths: target.copy?.sourcePaths ?? [], sftpServer: sftpServer))
        } else {
            print(try AuthorizedKeysLine(target: target, publicKey: key, sftpServer: sftpServer).render())
        }
    }
}
