import ImgBackupCore
import ImgBackupOS

/// How the bridge reaches the export: the configured URI, or the configured
/// command run on the remote through ssh with the target's port, identity and
/// options.
public enum NBDEndpointBuilder {
    public static func endpoint(for target: Target) throws(ImgBackupError) -> NBDEndpoint {
        switch target.nbd {
        case .uri(let uri)?: return .uri(uri)
        case .command(let command)?:
            let ssh: String
            do {
                ssh = try ExecutableLocator.locate("ssh")
            } catch {
                throw ImgBackupError(
                    .system, "failed to start the NBD export: \(error)", hint: "apt-get install openssh-client")
            }
            var argv = [ssh, "-T", "-p", String(target.port)]
            for option in SSHClientOptions.options(for: target, keepalive: true) { argv += ["-o", option] }
            argv += [target.remote.sshDestination, "--", RemoteCommandLine.of(command)]
            return .command(argv)
        case nil:
            throw ImgBackupError(.config, "target '\(target.name)' has no [target.\(target.name).nbd] table")
        }
    }
}
