import ImgBackupOS
import Synchronization

/// A loop device on the image file, with direct I/O; read-only for
/// `open --read-only`, so nothing above it can write to the image.
///
/// The device is attached with autoclear: the kernel detaches it once nobody
/// holds it. This layer holds it (``attachedDevice``) until dm-crypt has
/// opened it; call ``release()`` after that.
public final class LoopLayer: Layer {
    public let backingFile: String
    public let deadline: Duration
    public let readOnly: Bool
    private let attached = Mutex<LoopDevice?>(nil)

    public init(backingFile: String, deadline: Duration, readOnly: Bool = false) {
        self.backingFile = backingFile
        self.deadline = deadline
        self.readOnly = readOnly
    }

    public var intent: LayerRecord { .loop(backingFile: backingFile, device: nil) }

    public func up() async throws -> LayerRecord {
        let (backingFile, readOnly) = (self.backingFile, self.readOnly)
        let device: LoopDevice
        do {
            // Opening the image file is a request to the remote.
            device = try await withAbandonableDeadline(deadline, operation: "attach a loop device to \(backingFile)") {
                try LoopDevice.attach(backingFile: backingFile, directIO: true, readOnly: readOnly)
            }
        } catch let error as SystemCallError
            where [ELOOP, EXDEV, EINVAL].contains(error.errno) && error.call.hasPrefix("open")
        {
            // What the remote put in the image's place: never followed.
            let what =
                error.errno == ELOOP
                ? "is a symbolic link" : error.errno == EXDEV ? "is not on the remote's mount" : "is not a regular file"
            throw ImgBackupError(
                .remote, "refusing to open the image \(backingFile): on the remote it \(what)",
                hint:
                    "the backup host replaced the image; look at the remote directory, and restore the image from a copy"
            )
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "attach a loop device to \(backingFile)")
        }
        attached.withLock { $0 = device }
        return .loop(backingFile: backingFile, device: device.path)
    }

    /// The attached device, while this layer still holds it.
    public var attachedDevice: LoopDevice? { attached.withLock { $0 } }

    /// Lets go of the device: from now on its users (dm-crypt) keep it alive.
    public func release() { attached.withLock { $0 = nil } }
}

extension LoopLayer {
    static let kind = "loop"

    static func describe(backingFile: String, device: String?) -> String {
        "loop device \(device ?? "(not yet attached)") on \(backingFile)"
    }

    static func isUp(backingFile: String) -> Bool { !LoopDevice.devices(backingFile: backingFile).isEmpty }

    /// Every loop device on `backingFile`, detached; detaching is
    /// asynchronous in the kernel, so this waits until sysfs agrees.
    static func down(backingFile: String, in context: TeardownContext) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: context.stepDeadline)
        while true {
            let devices = LoopDevice.devices(backingFile: backingFile)
            if devices.isEmpty { return }
            for device in devices {
                if let holder = LoopDevice.holders(of: device).first {
                    throw ImgBackupError(
                        .invalidState, "failed to detach \(device): \(holder) still uses it",
                        hint: "the dm-crypt mapping above it did not close; run 'imgbackup close' again")
                }
                try LoopDevice.detach(device)
            }
            guard clock.now < deadline else {
                throw ImgBackupError(
                    .invalidState,
                    "failed to detach \(devices.joined(separator: ", ")) within \(context.stepDeadline.secondsText)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
