import CImgBackupShim

/// What imgbackup does to its own process before it reads a key.
public enum ProcessHardening {
    /// No core dump (the key, the volume key in libcryptsetup's buffers),
    /// and other users cannot ptrace the process or read its memory through
    /// /proc. Children (ssh, sshfs, rsync) are dumpable again after their
    /// exec, as before: they never see the key. The unit adds LimitCORE=0.
    public static func apply() {
        _ = imgb_set_not_dumpable()
    }
}
