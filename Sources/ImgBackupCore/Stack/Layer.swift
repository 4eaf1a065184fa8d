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
}
