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
        } catch let error as SystemCallError where [ELOOP, EXDEV, EINVAL].contains(error.errno) && error.call.hasPrefix("open") {
            // What the remote put in the image's place: never followed.
            let what = error.errno == ELOOP ? "is a symbolic link" : error.errno == EXDEV ? "is not on the remote's mount" : "is not a regular file"
            throw ImgBackupError(
                .remote, "refusing to open the image \(backingFile): on the remote it \(what)",
                hint: "the backup host replaced the image; look at the remote directory, and restore the image from a copy")
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

#if canImport(Glibc)
import Glibc
#endif
