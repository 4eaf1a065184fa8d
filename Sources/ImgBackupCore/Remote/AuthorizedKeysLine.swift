/// The one `authorized_keys` line a target's ssh key needs on the remote:
/// `restrict` plus a forced command that serves exactly what imgbackup asks
/// for and nothing else.
///
/// One key has one forced command, but a target needs SFTP (init, the sshfs
/// transport, the lock file) and, for trim or the NBD transport, its nbdkit
/// command. So the forced command looks at what the client asked for
/// (`$SSH_ORIGINAL_COMMAND`) and never runs it:
/// - an SFTP subsystem request gets sftp-server in an unprivileged user and
///   mount namespace whose root (pivot_root) is a fresh tmpfs holding only /usr,
///   read-only, /dev/null, a one-line /etc/passwd and the backup directory;
/// - the target's NBD command, exactly as imgbackup sends it, runs that command;
/// - anything else is refused with one line.
public struct AuthorizedKeysLine: Sendable {
    public let target: Target
    public let publicKey: String
    public let sftpServer: String

    public static let debianSFTPServer = "/usr/lib/openssh/sftp-server"

    public init(target: Target, publicKey: String, sftpServer: String = Self.debianSFTPServer) {
        self.target = target
        self.publicKey = publicKey.trimmingTrailingNewlines()
        self.sftpServer = sftpServer
    }

    public func render() throws(ImgBackupError) -> String {
        // RemoteLocation only holds absolute directories: the sandbox binds it by its full path.
        let directory = target.remote.directory
        for (what, text) in [("the remote directory", directory), ("the public key", publicKey)]
            + (nbdCommandSent.map { [("the nbd command", $0)] } ?? [])
        where Self.spansLines(text) {
            throw ImgBackupError(
                .config, "cannot write an authorized_keys line for '\(target.name)': \(what) spans lines",
                hint: "authorized_keys holds one key per line; rename it without line breaks")
        }
        return "restrict,command=\"\(Self.escapedForOption(forcedCommand))\" \(publicKey)"
    }

    /// The line for a host sources are pulled from: SFTP only, read-only
    /// (sshd's own internal-sftp, -R refuses every write), nothing else.
    public static func readOnlySource(publicKey: String) throws(ImgBackupError) -> String {
        let key = publicKey.trimmingTrailingNewlines()
        guard !spansLines(key) else {
            throw ImgBackupError(
                .config, "cannot write an authorized_keys line: the public key spans lines",
                hint: "authorized_keys holds one key per line: pass one key")
        }
        return "restrict,command=\"internal-sftp -R\" \(key)"
    }

    /// authorized_keys holds one key per line: a line break (or a NUL,
    /// which ends sshd's reading) would end the line early.
    static func spansLines(_ text: String) -> Bool {
        text.contains("\n") || text.contains("\r") || text.contains("\0")
    }

    /// What the client sends for the NBD export, word for word (see NBDEndpointBuilder).
    var nbdCommandSent: String? {
        guard case .command(let command)? = target.nbd else { return nil }
        return NBDEndpointBuilder.remoteCommandLine(command)
    }

    /// sh, run by the user's login shell with -c.
    var forcedCommand: String {
        let directory = target.remote.directory
        let sandbox = [
            "r=/\(Self.scratchRoot(avoiding: directory))",
            "mount -t tmpfs -o mode=0755,size=1m imgbackup \"$r\"",
            // The loader and libraries: mirror the top-level links (merged /usr) or bind the directories.
            "for d in bin sbin lib lib32 lib64 libx32; do if [ -L \"/$d\" ]; then ln -s \"$(readlink \"/$d\")\" \"$r/$d\";"
                + " elif [ -d \"/$d\" ]; then mkdir \"$r/$d\"; mount --rbind \"/$d\" \"$r/$d\"; mount -o remount,bind,ro \"$r/$d\"; fi; done",
            // sftp-server opens /dev/null first thing (OpenSSH's sanitise_stdfd).
            "mkdir \"$r/dev\"",
            ": > \"$r/dev/null\"",
            "mount --bind /dev/null \"$r/dev/null\"",
            // It also looks itself up by uid (0 in the namespace): give it a passwd of one line.
            "mkdir \"$r/etc\"",
            "echo 'imgbackup:x:0:0:imgbackup sftp:/:/nonexistent' > \"$r/etc/passwd\"",
            "mkdir \"$r/usr\"",
            "mount --rbind /usr \"$r/usr\"",
            "mount -o remount,bind,ro \"$r/usr\"",
            "mkdir -p \"$r$1\"",
            "mount --bind \"$1\" \"$r$1\"",
            // pivot_root and detach the old root rather than chroot: the namespace
            // then holds no copy of the host's other mounts, which would keep
            // them busy (an admin's umount fails with EBUSY) for the session.
            // umount finds mounts through /proc: lend it the host's until the old root is gone.
            "mkdir \"$r/.old-root\" \"$r/proc\"",
            "mount --rbind /proc \"$r/proc\"",
            "cd \"$r\"",
            "pivot_root . .old-root",
            "umount -l /.old-root",
            "umount -l /proc",
            "rmdir /.old-root /proc",
            "mount -o remount,ro /",
            "cd /",
            "exec \"$2\" -d \"$1\"",
        ].joined(separator: "; ")
        var branches = [
            "*sftp-server*|*internal-sftp*) exec unshare --user --map-root-user --mount sh -euc "
                + "\(NBDEndpointBuilder.shellQuoted(sandbox)) sh \(NBDEndpointBuilder.shellQuoted(directory)) \(NBDEndpointBuilder.shellQuoted(sftpServer)) ;;"
        ]
        if let sent = nbdCommandSent {
            branches.insert("\(NBDEndpointBuilder.shellQuoted(sent))) exec \(sent) ;;", at: 0)
        }
        branches.append(
            "*) echo \"imgbackup: this key of target '\(target.name)' only serves its image's SFTP and NBD export\" >&2; exit 1 ;;")
        // sshd gives other users than root a PATH without sbin, where Debian keeps pivot_root and nbdkit.
        return "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; "
            + "case \"$SSH_ORIGINAL_COMMAND\" in " + branches.joined(separator: " ") + " esac"
    }

    /// A directory the namespace may cover with its tmpfs: one that exists on
    /// every Linux host and is not above the backup directory (which would hide it).
    static func scratchRoot(avoiding directory: String) -> String {
        directory == "/mnt" || directory.hasPrefix("/mnt/") ? "tmp" : "mnt"
    }

    /// sshd takes `\"` as a quote inside command="..." and every other byte as is.
    static func escapedForOption(_ command: String) -> String {
        command.replacingOccurrences(of: "\"", with: "\\\"")
    }
}

extension String {
    fileprivate func trimmingTrailingNewlines() -> String {
        var text = self
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        return text
    }
}
