import ImgBackupOS
import Synchronization

/// The dm-crypt mapping of the image, activated in-process with
/// libcryptsetup: the key goes from memory to the kernel, never through a
/// command line.
public final class CryptLayer: Layer {
    public let device: String
    public let name: String
    public let key: SecureBytes
    /// What the target's image must be (UUID, volume-key digest, segment,
    /// keyslot encryption), as far as this machine knows.
    public let expected: HeaderExpectation
    /// Where the checked copy of the header goes while unlocking (a local
    /// file, removed once the mapping is up).
    public let detachedHeaderPath: String
    public let allowDiscards: Bool
    /// A read-only mapping (`open --read-only`).
    public let readOnly: Bool
    public let deadline: Duration
    private let seenPin = Mutex<HeaderPin?>(nil)

    public init(
        device: String, name: String, key: SecureBytes, expected: HeaderExpectation, detachedHeaderPath: String,
        allowDiscards: Bool, readOnly: Bool = false, deadline: Duration
    ) {
        self.device = device
        self.name = name
        self.key = key
        self.expected = expected
        self.detachedHeaderPath = detachedHeaderPath
        self.allowDiscards = allowDiscards
        self.readOnly = readOnly
        self.deadline = deadline
    }

    /// The pin of the header that was unlocked.
    public var observedPin: HeaderPin? { seenPin.withLock { $0 } }

    public var intent: LayerRecord { .crypt(name: name) }

    /// The mapped device.
    public var mappedDevice: String { "/dev/mapper/\(name)" }

    public func up() async throws -> LayerRecord {
        guard access("/dev/mapper/control", F_OK) == 0 else {
            throw ImgBackupError(
                .system,
                "failed to unlock the image: this kernel has no device-mapper (/dev/mapper/control is missing)",
                hint: "modprobe dm_crypt, or run on a kernel with dm-crypt")
        }
        // Another session's mapping (a target of the same name under another
        // config or state directory): never ours to activate over, nor to
        // close when this open unwinds.
        guard access(mappedDevice, F_OK) != 0 else {
            throw LayerNotMade(
                ImgBackupError(
                    .alreadyOpen,
                    "failed to unlock the image: \(mappedDevice) already exists, and this open did not make it",
                    hint:
                        "another session of a target named '\(name.dropFirst(Target.mappingPrefix.count))' has it; 'imgbackup status' or 'dmsetup info \(name)' says which"
                ))
        }
        let (device, name, key, expected, allowDiscards, readOnly, detached) = (
            device, name, key, expected, allowDiscards, readOnly, detachedHeaderPath
        )
        do {
            let pin = try await withAbandonableDeadline(deadline, operation: "unlock \(device)") {
                () throws -> HeaderPin in
                // Check the header the remote serves, then let libcryptsetup
                // act on a local copy of exactly those bytes: what it unlocks
                // is what was checked, whatever the remote serves next.
                let header = try CheckedHeader.read(device: device, expected: expected)
                try LUKS2Metadata.withDetachedHeader(
                    from: device, copies: header.copies, areas: header.keyslotAreas, length: header.dataOffset,
                    at: detached
                ) { () throws in
                    let crypt = try CryptDevice(devicePath: device, detachedHeader: detached)
                    try crypt.load()
                    do {
                        try crypt.activate(name: name, key: key, allowDiscards: allowDiscards, readOnly: readOnly)
                    } catch let error as CryptSetupError where error.isWrongKey {
                        throw ImgBackupError(
                            .badKey, "failed to unlock the image: the key does not open any keyslot",
                            hint: "check key_file or key_command")
                    }
                }
                return header.pin
            }
            seenPin.withLock { $0 = pin }
        } catch {
            throw ImgBackupError.wrapping(error, .luks, failedTo: "unlock the image on \(device)")
        }
        return intent
    }
}

extension CryptLayer {
    static let kind = "dm-crypt"

    static func describe(name: String) -> String { "dm-crypt mapping /dev/mapper/\(name)" }

    /// Up in any state device-mapper knows, live or half-made (a mapping an
    /// interrupted activation left still holds the name and must come down):
    /// one ioctl, where libcryptsetup's status would ask the same and more.
    static func isUp(name: String) -> Bool { CryptDevice.exists(name: name) }

    /// Deactivates the mapping; a busy one is refused, or (forced) its
    /// removal deferred until its last user lets go.
    static func down(name: String, force: Bool, in context: TeardownContext) async throws {
        let deadline = context.stepDeadline
        do {
            try await withAbandonableDeadline(deadline, operation: "deactivate /dev/mapper/\(name)") {
                try CryptDevice.deactivate(name: name)
            }
        } catch let error as CryptSetupError where error.isBusy {
            guard force else {
                throw ImgBackupError(
                    .invalidState, "failed to close /dev/mapper/\(name): it is in use",
                    hint: "something still holds it open; use close --force to remove it when it is released")
            }
            context.logger.notice("/dev/mapper/\(name) is busy: deferring its removal")
            try await withAbandonableDeadline(deadline, operation: "deactivate /dev/mapper/\(name)") {
                try CryptDevice.deactivate(name: name, deferred: true)
            }
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
