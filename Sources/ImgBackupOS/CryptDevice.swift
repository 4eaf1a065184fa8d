import CCryptsetup
import CImgBackupShim
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A libcryptsetup call failed. `log` holds the last error line libcryptsetup
/// itself reported (e.g. "Cannot initialize device-mapper"), which usually
/// says more than the errno.
public struct CryptSetupError: Error, Sendable, CustomStringConvertible {
    public let call: String
    public let device: String
    public let errno: Int32
    public let log: String?

    /// `crypt_activate_by_passphrase` answers -EPERM when no keyslot opens with the key.
    public var isWrongKey: Bool { call == "crypt_activate_by_passphrase" && errno == EPERM }
    /// The device is not a LUKS device (`crypt_load` answers -EINVAL).
    public var isNotLUKS: Bool { call == "crypt_load" && errno == EINVAL }
    public var isBusy: Bool { errno == EBUSY }

    public var description: String {
        let reason = log ?? String(cString: strerror(errno))
        return "\(call) on \(device): \(reason)"
    }
}

/// Key-derivation settings for new keyslots.
public struct PBKDFSettings: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case argon2id, argon2i, pbkdf2
    }
    public var kind: Kind
    /// Forced iterations with no benchmark. Only for tests: a fixed small
    /// count makes the key cheap to brute-force.
    public var forcedIterations: UInt32?

    public init(kind: Kind = .argon2id, forcedIterations: UInt32? = nil) {
        self.kind = kind
        self.forcedIterations = forcedIterations
    }

    /// cryptsetup's own default: argon2id benchmarked to about 2 s.
    public static let strong = PBKDFSettings()
}

/// Collects libcryptsetup's error log lines for one handle.
private final class CryptLog: Sendable {
    let lastError = Mutex<String?>(nil)
}

/// Owns one `crypt_device` handle. Not shared between threads: each
/// operation creates its own (which is how libcryptsetup is meant to be used).
public final class CryptDevice {
    private var handle: OpaquePointer?
    private let log = CryptLog()
    /// The device (loop device or image file) the handle is on.
    public let devicePath: String

    /// Opens a handle on `devicePath` (no I/O yet). With `detachedHeader`,
    /// libcryptsetup reads the LUKS metadata and keyslots from that local
    /// file and only the data from `devicePath`.
    public init(devicePath: String, detachedHeader: String? = nil) throws(CryptSetupError) {
        self.devicePath = devicePath
        CryptDevice.silenceGlobalLog()
        var cd: OpaquePointer?
        let status = detachedHeader.map { crypt_init_data_device(&cd, $0, devicePath) } ?? crypt_init(&cd, devicePath)
        guard status == 0, let cd else {
            throw CryptSetupError(call: "crypt_init", device: detachedHeader ?? devicePath, errno: -status, log: nil)
        }
        handle = cd
        crypt_set_log_callback(
            cd,
            { level, message, context in
                guard level == imgb_crypt_log_error, let message, let context else { return }
                let log = Unmanaged<CryptLog>.fromOpaque(context).takeUnretainedValue()
                let line = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
                log.lastError.withLock { $0 = line }
            },
            Unmanaged.passUnretained(log).toOpaque()
        )
    }

    deinit { crypt_free(handle) }

    private func fail(_ call: String, _ status: Int32) -> CryptSetupError {
        let line = log.lastError.withLock { line in
            defer { line = nil }
            return line
        }
        return CryptSetupError(call: call, device: devicePath, errno: -status, log: line)
    }

    // MARK: Format and keyslots

    /// Writes a new LUKS2 header with a random volume key and one keyslot for
    /// `key`. Returns the new header's UUID.
    public func formatLUKS2(
        key: SecureBytes, cipher: String = "aes", cipherMode: String = "xts-plain64",
        volumeKeyBytes: Int = 64, sectorSize: UInt32 = 4096, pbkdf: PBKDFSettings = .strong
    ) throws(CryptSetupError) -> String {
        try applyPBKDF(pbkdf)
        var params = crypt_params_luks2()
        params.sector_size = sectorSize
        let status = crypt_format(handle, CRYPT_LUKS2, cipher, cipherMode, nil, nil, volumeKeyBytes, &params)
        if status < 0 { throw fail("crypt_format", status) }
        try addKeyslot(key: key)
        guard let uuid else {
            throw CryptSetupError(call: "crypt_get_uuid", device: devicePath, errno: EINVAL, log: nil)
        }
        return uuid
    }

    private func addKeyslot(key: SecureBytes) throws(CryptSetupError) {
        let status = key.withUnsafeBytes { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                crypt_keyslot_add_by_volume_key(handle, imgb_crypt_any_slot, nil, 0, chars.baseAddress, chars.count)
            }
        }
        if status < 0 { throw fail("crypt_keyslot_add_by_volume_key", status) }
    }

    /// Adds a keyslot for `newKey`, unlocked by `existingKey` (a second key,
    /// e.g. an offline recovery key). Needs ``load()`` first. Returns the slot.
    @discardableResult
    public func addKeyslot(existingKey: SecureBytes, newKey: SecureBytes, pbkdf: PBKDFSettings = .strong)
        throws(CryptSetupError) -> Int
    {
        try applyPBKDF(pbkdf)
        let status = existingKey.withUnsafeBytes { old in
            old.withMemoryRebound(to: CChar.self) { oldChars in
                newKey.withUnsafeBytes { new in
                    new.withMemoryRebound(to: CChar.self) { newChars in
                        crypt_keyslot_add_by_passphrase(
                            handle, imgb_crypt_any_slot, oldChars.baseAddress, oldChars.count, newChars.baseAddress,
                            newChars.count)
                    }
                }
            }
        }
        if status < 0 { throw fail("crypt_keyslot_add_by_passphrase", status) }
        return Int(status)
    }

    /// The keyslots that hold a key. Needs ``load()`` first.
    public var activeKeyslots: [Int] {
        let slots = crypt_keyslot_max(CRYPT_LUKS2)
        guard slots > 0 else { return [] }
        return (0..<Int(slots)).filter { slot in
            let status = crypt_keyslot_status(handle, Int32(slot))
            return status == CRYPT_SLOT_ACTIVE || status == CRYPT_SLOT_ACTIVE_LAST
        }
    }

    /// Wipes one keyslot: the key it held no longer opens the image.
    public func destroyKeyslot(_ slot: Int) throws(CryptSetupError) {
        let status = crypt_keyslot_destroy(handle, Int32(slot))
        if status < 0 { throw fail("crypt_keyslot_destroy", status) }
    }

    private func applyPBKDF(_ settings: PBKDFSettings) throws(CryptSetupError) {
        var status: Int32 = 0
        settings.kind.rawValue.withCString { type in
            "sha256".withCString { hash in
                var pbkdf = crypt_pbkdf_type()
                pbkdf.type = type
                pbkdf.hash = hash
                pbkdf.time_ms = 2000
                if settings.kind != .pbkdf2 {
                    pbkdf.max_memory_kb = 1_048_576
                    pbkdf.parallel_threads = 4
                }
                if let iterations = settings.forcedIterations {
                    pbkdf.iterations = iterations
                    pbkdf.flags = imgb_crypt_pbkdf_no_benchmark
                    if settings.kind != .pbkdf2 {
                        pbkdf.max_memory_kb = 32
                        pbkdf.parallel_threads = 1
                    }
                }
                status = crypt_set_pbkdf_type(handle, &pbkdf)
            }
        }
        if status < 0 { throw fail("crypt_set_pbkdf_type", status) }
    }

    // MARK: Load and inspect

    /// Reads the LUKS header. Fails with ``CryptSetupError/isNotLUKS`` when
    /// there is none.
    public func load() throws(CryptSetupError) {
        let status = crypt_load(handle, nil, nil)
        if status < 0 { throw fail("crypt_load", status) }
    }

    public var uuid: String? { crypt_get_uuid(handle).map { String(cString: $0) } }
    public var type: String? { crypt_get_type(handle).map { String(cString: $0) } }
    /// "aes-xts-plain64".
    public var cipherSpec: String? {
        guard let cipher = crypt_get_cipher(handle), let mode = crypt_get_cipher_mode(handle) else { return nil }
        return "\(String(cString: cipher))-\(String(cString: mode))"
    }

    // MARK: Activation

    /// Unlocks the volume key with `key` and maps it as `/dev/mapper/<name>`.
    /// With `name == nil` it only checks the key (needs no device-mapper).
    /// Returns the keyslot that opened.
    @discardableResult
    public func activate(name: String?, key: SecureBytes, allowDiscards: Bool = false, readOnly: Bool = false)
        throws(CryptSetupError) -> Int
    {
        // Private: udev leaves the mapping alone. Otherwise its blkid probes
        // the new device with some 60 reads of 4 KiB, each a round trip to
        // the remote (1.1 MiB and seconds per open over a slow link), while
        // libcryptsetup waits for udev to finish; and nothing else (LVM,
        // desktop automounters) should scan a backup image anyway.
        var flags: UInt32 = name == nil ? 0 : imgb_crypt_activate_private
        if allowDiscards { flags |= imgb_crypt_activate_allow_discards }
        if readOnly { flags |= imgb_crypt_activate_readonly }
        let status = key.withUnsafeBytes { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                crypt_activate_by_passphrase(handle, name, imgb_crypt_any_slot, chars.baseAddress, chars.count, flags)
            }
        }
        if status < 0 { throw fail("crypt_activate_by_passphrase", status) }
        return Int(status)
    }

    /// Grows the active mapping `name` to the size of the device under it
    /// (after that device grew). LUKS2 keeps the volume key in the kernel
    /// keyring only while activating, so `key` unlocks it again first; the
    /// mapping itself is never closed.
    /// With `detachedHeader`, the metadata and keyslots come from that local
    /// file (a checked copy), not from the device under the mapping.
    public static func growActive(name: String, key: SecureBytes, detachedHeader: String? = nil) throws(CryptSetupError)
    {
        silenceGlobalLog()
        var cd: OpaquePointer?
        let status = crypt_init_by_name_and_header(&cd, name, detachedHeader)
        guard status == 0, let cd else {
            throw CryptSetupError(call: "crypt_init_by_name", device: "/dev/mapper/\(name)", errno: -status, log: nil)
        }
        defer { crypt_free(cd) }
        let unlocked = key.withUnsafeBytes { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                crypt_activate_by_passphrase(
                    cd, nil, imgb_crypt_any_slot, chars.baseAddress, chars.count, imgb_crypt_activate_keyring_key)
            }
        }
        if unlocked < 0 {
            throw CryptSetupError(
                call: "crypt_activate_by_passphrase", device: "/dev/mapper/\(name)", errno: -unlocked, log: nil)
        }
        // 0: as large as the underlying device.
        let resized = crypt_resize(cd, name, 0)
        if resized < 0 {
            throw CryptSetupError(call: "crypt_resize", device: "/dev/mapper/\(name)", errno: -resized, log: nil)
        }
    }

    /// Whether `/dev/mapper/<name>` exists as an active mapping.
    public static func isActive(name: String) -> Bool {
        silenceGlobalLog()
        let status = crypt_status(nil, name)
        return status == CRYPT_ACTIVE || status == CRYPT_BUSY
    }

    /// Removes the mapping `name`. Not active counts as success. `deferred`
    /// lets the kernel remove it when its last user closes it.
    public static func deactivate(name: String, deferred: Bool = false) throws(CryptSetupError) {
        guard isActive(name: name) else {
            try removeHalfMade(name: name)
            return
        }
        let flags: UInt32 = deferred ? imgb_crypt_deactivate_deferred : 0
        let status = crypt_deactivate_by_name(nil, name, flags)
        if status < 0 && status != -ENODEV {
            throw CryptSetupError(
                call: "crypt_deactivate_by_name", device: "/dev/mapper/\(name)", errno: -status, log: nil)
        }
    }

    /// A device-mapper device of this name that libcryptsetup does not count
    /// as active: an `open` killed between creating the device and resuming
    /// it leaves one without a live table, still holding its loop device.
    /// Removed directly; its /dev/mapper node goes too where no udev does that.
    private static func removeHalfMade(name: String) throws(CryptSetupError) {
        // Asked of device-mapper itself: a device killed before its first
        // table load has no /sys/block entry, yet holds the name.
        guard exists(name: name) else { return }
        let status = imgb_dm_remove(name)
        if status < 0 && status != -ENXIO {
            throw CryptSetupError(call: "DM_DEV_REMOVE", device: "/dev/mapper/\(name)", errno: -status, log: nil)
        }
        let node = "/dev/mapper/\(name)"
        var info = stat()
        if !exists(name: name), lstat(node, &info) == 0, (info.st_mode & S_IFMT) == S_IFBLK {
            unlink(node)
        }
    }

    /// Whether device-mapper has a device called `name` in any state: live,
    /// with only an inactive table, or with no table at all (an activation
    /// killed right after creating it). A question to the kernel that does
    /// not touch the device, so it never blocks on a hung remote.
    public static func exists(name: String) -> Bool {
        imgb_dm_exists(name) == 1
    }

    /// libcryptsetup prints to stderr when a call has no handle with a log
    /// callback; imgbackup reports errors itself, in one line.
    private static let globalLogSilenced: Bool = {
        crypt_set_log_callback(nil, { _, _, _ in }, nil)
        return true
    }()

    private static func silenceGlobalLog() { _ = globalLogSilenced }
}
