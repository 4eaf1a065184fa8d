#if canImport(Glibc)
    import Glibc
#endif

/// A failed system or library call: which call, on what, and the errno it
/// returned. Raw errno values never leave ImgBackupOS in any other form.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The call that failed, e.g. `"ioctl(LOOP_CONFIGURE)"`.
    public let call: String
    /// The object it was called on, e.g. a path or device.
    public let object: String
    /// The errno value (positive).
    public let errno: Int32

    public init(call: String, object: String, errno: Int32) {
        self.call = call
        self.object = object
        self.errno = errno
    }

    /// The C library's text for the errno.
    public var reason: String { String(cString: strerror(errno)) }

    public var description: String { "\(call) on \(object): \(reason)" }

    /// True for the errno values that mean "the thing is already gone".
    public var meansAlreadyGone: Bool { errno == ENOENT || errno == ENXIO || errno == ENODEV }
}

/// Runs a C call that returns -1 and sets errno, retrying on EINTR.
@discardableResult
func checked(_ call: String, _ object: String, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = Glibc.errno
        if code == EINTR { continue }
        throw SystemCallError(call: call, object: object, errno: code)
    }
}

/// Runs a shim call that returns -errno on failure.
@discardableResult
public func checkedNegative(_ call: String, _ object: String, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        if -result == EINTR { continue }
        throw SystemCallError(call: call, object: object, errno: -result)
    }
}
