/// The `-o` options of every ssh client imgbackup starts itself for a target
/// (the NBD command's ssh, doctor's sftp; sshfs has its own builder): never a
/// prompt, a bounded connect, the target's identity, then the target's
/// ssh_options. ssh keeps the first value it reads for an option, so these
/// hold even if ssh_options repeat them.
public enum SSHClientOptions {
    public static let connectTimeoutSeconds = 20

    /// `keepalive` for connections that stay up (a dead link ends them in 45 s).
    public static func options(for target: Target, keepalive: Bool) -> [String] {
        options(identityFile: target.identityFile, sshOptions: target.sshOptions, keepalive: keepalive)
    }

    /// The same for any login: a source host's uses the copy table's keys.
    public static func options(identityFile: String?, sshOptions: [String], keepalive: Bool) -> [String] {
        var options = ["BatchMode=yes"]
        if keepalive { options += ["ServerAliveInterval=15", "ServerAliveCountMax=3"] }
        options.append("ConnectTimeout=\(connectTimeoutSeconds)")
        if let identity = identityFile { options += ["IdentityFile=\(identity)", "IdentitiesOnly=yes"] }
        return options + sshOptions
    }
}
