import ImgBackupOS
import Synchronization

/// A loop device on the image file, with direct I/O.
///
/// The device is attached with autoclear: the kernel detaches it once nobody
/// holds it. This layer holds it (``attachedDevice``) until dm-crypt has
/// opened it; call ``release()`` after that.
public final class LoopLayer: Layer {
    public let backingFile: String
    public let deadline: Duration
    private let attached = Mutex<LoopDevice?>(nil)

    public init(backingFile: String, deadline: Duration) {
        self.backingFile = backingFile
        self.deadline = deadline
    }

    public var intent: LayerRecord { .loop(backingFile: backingFile, device: nil) }

    public func up() async throws -> LayerRecord {
        let backingFile = self.backingFile
        let device: LoopDevice
        do {
            // Opening the image file is a request to the remote.
            device = try await withAbandonableDeadline(deadline, operation: "attach a loop device to \(backingFile)") {
                try LoopDevice.attach(backingFile: backingFile, directIO: true)
            }
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
