import Synchronization

/// A fact one task learns and another reads afterwards: set once, never reset.
public final class Latch: Sendable {
    private let value = Mutex(false)
    public init() {}
    public var isSet: Bool { value.withLock { $0 } }
    public func set() { value.withLock { $0 = true } }
}
