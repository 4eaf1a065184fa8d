import ImgBackupOS
import Synchronization

/// The dm-crypt mapping of the image, activated in-process with
/// libcryptsetup: the key goes from memory to the kernel, never through a
/// command line.
public final class CryptLayer: Layer {
    public let device: String
    public let name: String
    public let key: SecureBytes
    /// The UUID the target's image must have; nil when none is known yet.
    public let expectedUUID: String?
    public let allowDiscards: Bool
    public let deadline: Duration
    private let seenUUID = Mutex<String?>(nil)

    public init(
        device: String, name: String, key: SecureBytes, expectedUUID: String?, allowDiscards: Bool, deadline: Duration
    ) {
        self.device = device
        self.name = name
        self.key = key
        self.expectedUUID = expectedUUID
        self.allowDiscards = allowDiscards
        self.deadline = deadline
    }

    /// The LUKS UUID of the header that was unlocked.
    public var observedUUID: String? { seenUUID.withLock { $0 } }

    public var intent: LayerRecord { .crypt(name: name) }

    /// The mapped device.
    public var mappedDevice: String { "/dev/mapper/\(name)" }

    public func up() async throws -> LayerRecord {
        guard access("/dev/mapper/control", F_OK) == 0 else {
            throw ImgBackupError(
                .system, "failed to unlock the image: this kernel has no device-mapper (/dev/mapper/control is missing)",
                hint: "modprobe dm_crypt, or run on a kernel with dm-crypt")
        }
        let (device, name, key, expectedUUID, allowDiscards) = (device, name, key, expectedUUID, allowDiscards)
        do {
            let uuid = try await withAbandonableDeadline(deadline, operation: "unlock \(device)") { () throws -> String in
                let crypt = try CryptDevice(devicePath: device)
                do {
                    try crypt.load()
                } catch let error as CryptSetupError where error.isNotLUKS {
                    throw ImgBackupError(
                        .luks, "failed to unlock the image: it has no LUKS header",
                        hint: "is this an imgbackup image? 'imgbackup init' makes one")
                }
                let uuid = crypt.uuid ?? "?"
                if let expectedUUID, uuid != expectedUUID {
                    throw ImgBackupError(
                        .luks,
                        "failed to unlock the image: its LUKS UUID is \(uuid), but this target's image has \(expectedUUID)",
                        hint: "the remote file was replaced; if that was on purpose, remove the recorded UUID")
                }
                do {
                    try crypt.activate(name: name, key: key, allowDiscards: allowDiscards)
                } catch let error as CryptSetupError where error.isWrongKey {
                    throw ImgBackupError(
                        .badKey, "failed to unlock the image: the key does not open any keyslot",
                        hint: "check key_file or key_command")
                }
                return uuid
            }
            seenUUID.withLock { $0 = uuid }
        } catch {
            throw ImgBackupError.wrapping(error, .luks, failedTo: "unlock the image on \(device)")
        }
        return intent
    }
}

#if canImport(Glibc)
import Glibc
#endif
