/// The deadlines of one target's commands, by name. Two come from the
/// target's config (`[target.NAME.timeouts]`: stall and teardown); every
/// other one a command waits on is either fixed here or named beside the
/// step it bounds (`CopyContext.stepLimit`, `WriteOut.limit`,
/// `FilesystemCheck.checkLimit`, ...). Nothing reads `timeouts` around these.
struct Deadlines: Sendable {
    /// The transport coming up: the sshfs mount, or the NBD bridge connecting.
    let transportUp: Duration = .seconds(60)
    /// One call that must reach the remote (stat, open, the lock file,
    /// unlocking, the generation marker): no answer for the stall timeout is
    /// a hang.
    let remoteCall: Duration
    /// A step that works through the transport (the copy step, fstrim)
    /// seeing no progress and no answer from it this long: a hang.
    let stall: Duration
    /// Each step of a teardown before it escalates; also how long a stopped
    /// step gets to let go of the image.
    let teardownStep: Duration

    init(_ target: Target) {
        remoteCall = target.timeouts.stall
        stall = target.timeouts.stall
        teardownStep = target.timeouts.teardown
    }

    /// luksFormat: a remote call, plus the PBKDF benchmark of the new keyslot.
    var luksFormat: Duration { remoteCall + .seconds(60) }
    /// Adding, replacing or removing a keyslot: the header writes, plus the
    /// PBKDF of a new slot, which takes seconds.
    var keyslotChange: Duration { teardownStep + .seconds(120) }
    /// Processes an interrupted run left using the mount: TERM, then KILL
    /// after `orphanGrace`, all within a teardown step.
    var orphanStop: Duration { teardownStep }
    let orphanGrace: Duration = .seconds(5)
}
