/// One layer of the stack on its way up: it knows what it will put up
/// (`intent`, recorded before anything happens) and how to do it.
public protocol Layer: Sendable {
    /// Recorded before `up` starts, so a crash halfway still leaves a trace.
    var intent: LayerRecord { get }
    /// Brings the layer up and returns the record of what is now up (it may
    /// add what was only known afterwards, such as the loop device's name).
    func up() async throws -> LayerRecord
}

/// Takes layers down from their records alone, so `close` can finish the job
/// of a process that crashed. Every `down` is idempotent: a layer that is
/// already down (or never came up) counts as success.
public protocol LayerTeardown: Sendable {
    func down(_ record: LayerRecord, force: Bool) async throws
    /// A step did not finish within its deadline: the remote under `records`
    /// stopped answering. Cut their transports off (abort the FUSE
    /// connections), so whatever waits on them fails instead of waiting
    /// forever: a thread stuck in the kernel on a frozen remote would keep
    /// the process from ever exiting.
    func cutOff(_ records: [LayerRecord]) async
}
