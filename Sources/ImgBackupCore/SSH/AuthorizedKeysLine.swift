/// The one `authorized_keys` line a target's ssh key needs on the remote:
/// `restrict` plus a forced command that serves exactly what imgbackup asks
/// for and nothing else.
///
/// One key has one forced command, but a target needs SFTP (init, the sshfs
/// transport, the lock file) and, for trim or the NBD transport, its nbdkit
/// command. So the forced command looks at what the client asked for
/// (`$SSH_ORIGINAL_COMMAND`) and never runs it:
/// - an SFTP subsystem request gets sftp-server, with symlink and hardlink
///   creation refused;
/// - the target's NBD command, exactly as imgbackup sends it, runs that command;
/// - anything else is refused with one line.
///
/// Both run in a sandbox: a mount namespace (in a user namespace unless the
/// login is root) whose root (pivot_root) is a fresh tmpfs holding only
/// /usr, read-only, /dev/null, a one-line /etc/passwd and the backup
/// directory. A symlink in the directory, however it got there, cannot lead
/// the NBD server to another target's image or to the login's own
/// authorized_keys: nothing else exists in there.
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
        let components = directory.split(separator: "/")
        guard !components.isEmpty, !components.contains("."), !components.contains("..") else {
            throw ImgBackupError(
                .config,
                "cannot write an authorized_keys line for '\(target.name)': the remote directory \(directory) "
                    + "must be a directory of its own, not / and without . or .. in it",
                hint: "give the target a directory that holds only its image, such as /srv/backups/\(target.name)")
        }
        for (what, text) in [("the remote directory", directory), ("the public key", publicKey)]
            + (nbdCommandSent.map { [("the nbd command", $0)] } ?? [])
        where Self.spansLines(text) {
            throw ImgBackupError(
                .config, "cannot write an authorized_keys line for '\(target.name)': \(what) spans lines",
                hint: "authorized_keys holds one key per line; rename it without line breaks")
        }
        return "restrict,command=\"\(Self.escapedForOption(forcedCommand))\" \(publicKey)"
    }

    /// The line for a host sources are pulled from: read-only SFTP in the
    /// same sandbox, which holds only `paths` (the target's sources on such
    /// hosts), bound read-only; nothing else.
    public static func readOnlySource(publicKey: String, paths: [String], sftpServer: String = debianSFTPServer)
        throws(ImgBackupError) -> String
    {
        let key = publicKey.trimmingTrailingNewlines()
        guard !spansLines(key), !paths.contains(where: spansLines) else {
            throw ImgBackupError(
                .config, "cannot write an authorized_keys line: the public key or a source path spans lines",
                hint: "authorized_keys holds one key per line: pass one key")
        }
        let binds = paths.map { Bind(path: $0, readOnly: true, mayBeMissing: true) }
        let command =
            "export PATH=\(remotePath); \(namespaceChoice) "
            + "exec \(sandboxed(binds: binds)) \(sh(sftpServer)) -R -P symlink,hardlink"
        return "restrict,command=\"\(escapedForOption(command))\" \(key)"
    }

    /// authorized_keys holds one key per line: a line break (or a NUL,
    /// which ends sshd's reading) would end the line early.
    static func spansLines(_ text: String) -> Bool {
        text.contains("\n") || text.contains("\r") || text.contains("\0")
    }

    /// What the client sends for the NBD export, word for word (see NBDEndpointBuilder).
    var nbdCommandSent: String? {
        guard case .command(let command)? = target.nbd else { return nil }
        return RemoteCommandLine.of(command)
    }

    /// sshd gives other users than root a PATH without sbin, where Debian keeps pivot_root and nbdkit.
    static let remotePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// Root may make a mount namespace as it is; anyone else needs a user
    /// namespace, which would show every file's owner but its own as nobody
    /// (a pull backup as root must keep owners).
    static let namespaceChoice =
        "if [ \"$(id -u)\" = 0 ]; then u='unshare --mount'; else u='unshare --user --map-root-user --mount'; fi;"

    /// sh, run by the user's login shell with -c.
    var forcedCommand: String {
        let directory = target.remote.directory
        let sandbox = Self.sandboxed(binds: [Bind(path: directory, readOnly: false, mayBeMissing: false)])
        let refuse =
            "echo \"imgbackup: this key of target '\(target.name)' only serves its image's SFTP and NBD export\" >&2; exit 1"
        // A directory that holds the login's ssh keys would let SFTP rewrite them.
        let guardHome =
            "case \"$HOME/\" in \(Self.sh(directory + "/"))*) echo \"imgbackup: refusing to serve \(directory): it holds the login's home directory\" >&2; exit 1 ;; esac; "
            + "if [ -e \(Self.sh(directory + "/.ssh")) ]; then echo \"imgbackup: refusing to serve \(directory): it holds a .ssh directory\" >&2; exit 1; fi;"
        var branches = [
            "*sftp-server*|*internal-sftp*) exec \(sandbox) \(Self.sh(sftpServer)) -d \(Self.sh(directory)) -P symlink,hardlink ;;"
        ]
        if let sent = nbdCommandSent {
            branches.insert("\(Self.sh(sent))) exec \(sandbox) sh -c \(Self.sh(sent)) ;;", at: 0)
        }
        branches.append("*) \(refuse) ;;")
        return "export PATH=\(Self.remotePath); \(guardHome) \(Self.namespaceChoice) "
            + "case \"$SSH_ORIGINAL_COMMAND\" in " + branches.joined(separator: " ") + " esac"
    }

    struct Bind {
        let path: String
        let readOnly: Bool
        /// Skipped when it does not exist (a source path on another host).
        let mayBeMissing: Bool
    }

    /// `$u sh -euc SCRIPT sh`, to be followed by the command to run inside:
    /// builds the sandbox root, binds `binds` at their own paths, pivots
    /// into it and execs the rest of its arguments.
    static func sandboxed(binds: [Bind]) -> String {
        let scratch = scratchRoot(avoiding: binds.map(\.path))
        var script = [
            "r=/\(scratch)",
            "mount -t tmpfs -o mode=0755,size=1m imgbackup \"$r\"",
            // The loader and libraries: mirror the top-level links (merged /usr) or bind the directories.
            "for d in bin sbin lib lib32 lib64 libx32; do if [ -L \"/$d\" ]; then ln -s \"$(readlink \"/$d\")\" \"$r/$d\";"
                + " elif [ -d \"/$d\" ]; then mkdir \"$r/$d\"; mount --rbind \"/$d\" \"$r/$d\"; mount -o remount,bind,ro \"$r/$d\"; fi; done",
            // sftp-server opens /dev/null first thing (OpenSSH's sanitise_stdfd).
            "mkdir \"$r/dev\"",
            ": > \"$r/dev/null\"",
            "mount --bind /dev/null \"$r/dev/null\"",
            // It also looks itself up by uid: give it a passwd of one line.
            "mkdir \"$r/etc\"",
            "echo 'imgbackup:x:0:0:imgbackup sftp:/:/nonexistent' > \"$r/etc/passwd\"",
            "mkdir \"$r/usr\"",
            "mount --rbind /usr \"$r/usr\"",
            "mount -o remount,bind,ro \"$r/usr\"",
        ]
        for bind in binds {
            let path = sh(bind.path)
            let steps =
                "if [ -d \(path) ]; then mkdir -p \"$r\"\(path); else mkdir -p \"$r\"\(sh(parent(of: bind.path))); : > \"$r\"\(path); fi; "
                + "mount --rbind \(path) \"$r\"\(path)"
                + (bind.readOnly ? "; mount -o remount,bind,ro \"$r\"\(path)" : "")
            script.append(bind.mayBeMissing ? "if [ -e \(path) ]; then \(steps); fi" : steps)
        }
        script += [
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
            "exec \"$@\"",
        ]
        return "$u sh -euc \(sh(script.joined(separator: "; "))) sh"
    }

    static func sh(_ word: String) -> String { RemoteCommandLine.shellQuoted(word) }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    /// A directory the namespace may cover with its tmpfs: one that exists on
    /// every Linux host and is neither above nor inside a bound path (which it would hide).
    static func scratchRoot(avoiding paths: [String]) -> String {
        let candidates = ["mnt", "tmp", "media", "opt", "srv"]
        return candidates.first { candidate in
            !paths.contains { $0 == "/\(candidate)" || $0.hasPrefix("/\(candidate)/") }
        } ?? "mnt"
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
