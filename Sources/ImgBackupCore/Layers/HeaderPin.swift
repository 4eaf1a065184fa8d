import Foundation
import ImgBackupOS

/// What makes a target's image the one this machine created, kept on the
/// client and compared with the LUKS2 header before every unlock.
///
/// The UUID alone is a plaintext string the backup host can copy into a
/// header of its own. The digest binds the volume key (its salt and the
/// PBKDF2 of the key): a header with another volume key cannot carry it.
/// The segment says how the data is encrypted (a host could turn it into
/// `cipher_null`, and the right key would then write plaintext). Keyslots
/// may come and go (`key add`, `key remove`), so only their encryption is
/// pinned: libcryptsetup before 2.8.1 opens a `cipher_null` keyslot with any
/// passphrase (CVE-2025-59054).
public struct HeaderPin: Codable, Equatable, Sendable {
    public var uuid: String
    /// The data segment's JSON object, keys sorted.
    public var segment: String
    /// Each digest's JSON object without its keyslot list, keys sorted.
    public var digests: [String]
    /// The encryption of every keyslot area, e.g. "aes-xts-plain64".
    public var keyslotEncryption: String
}

/// What an image's header is checked against before it is unlocked.
public enum HeaderExpectation: Sendable {
    /// The full pin, recorded at init or at the first open since.
    case pinned(HeaderPin)
    /// Only the UUID: a machine that recorded it before pins existed. The
    /// first open that succeeds records the pin.
    case uuidOnly(String)
    /// Nothing yet (a new machine): trust on first use, then pinned.
    case firstUse

    var pin: HeaderPin? {
        if case .pinned(let pin) = self { return pin }
        return nil
    }
}

/// The checked reading of an image's LUKS2 header: the pin it matches and
/// the byte ranges a detached copy needs.
struct CheckedHeader {
    let pin: HeaderPin
    let copies: [LUKS2MetadataCopy]
    /// The keyslot areas (offset, length), within the header's own space.
    let keyslotAreas: [(offset: UInt64, length: UInt64)]
    /// Where the data starts: the detached copy is this long.
    let dataOffset: UInt64

    /// The most a keyslot area may take (a 512-bit key in 4000 stripes
    /// takes 252 KiB) and the farthest the data may start (cryptsetup allows
    /// 128 MiB of keyslots): bounds on what the remote makes us read.
    static let maximumAreaLength: UInt64 = 8 << 20
    static let maximumDataOffset: UInt64 = 256 << 20

    /// Checks every copy of the metadata: each must parse, none may use
    /// `cipher_null`, and all must match `expected` (when this machine has a
    /// pin) and each other. Throws exit 5 with one line otherwise.
    init(copies: [LUKS2MetadataCopy], expected: HeaderExpectation, device: String) throws(ImgBackupError) {
        var first: (pin: HeaderPin, areas: [(offset: UInt64, length: UInt64)], dataOffset: UInt64)?
        for copy in copies {
            let parsed = try Self.parse(copy, device: device)
            switch expected {
            case .pinned(let pin): try Self.compare(parsed.pin, with: pin, copy: copy)
            case .uuidOnly(let uuid) where parsed.pin.uuid != uuid:
                throw Self.notOurs("its LUKS UUID is \(parsed.pin.uuid), but this target's image has \(uuid)")
            case .uuidOnly, .firstUse: break
            }
            if let first, parsed.pin != first.pin {
                throw Self.notOurs("its two LUKS2 metadata copies disagree (offsets 0 and \(copy.offset))")
            }
            if first == nil { first = parsed }
        }
        guard let first else { throw Self.notOurs("it has no LUKS2 header") }
        pin = first.pin
        self.copies = copies
        keyslotAreas = first.areas
        dataOffset = first.dataOffset
    }

    /// Reads every metadata copy on `device` and checks it.
    static func read(device: String, expected: HeaderExpectation) throws(ImgBackupError) -> CheckedHeader {
        let copies: [LUKS2MetadataCopy]
        do {
            copies = try LUKS2Metadata.readCopies(device: device)
        } catch .noPrimaryHeader {
            throw ImgBackupError(
                .luks, "failed to unlock the image: it has no LUKS header",
                hint: "is this an imgbackup image? 'imgbackup init' makes one")
        } catch {
            throw ImgBackupError(.luks, "failed to read the LUKS2 header: \(error)")
        }
        return try CheckedHeader(copies: copies, expected: expected, device: device)
    }

    static func notOurs(_ reason: String) -> ImgBackupError {
        ImgBackupError(
            .luks,
            "refusing to unlock the image: the image on the remote is not the one this machine created: \(reason)",
            hint:
                "the backup host changed or replaced its LUKS header; write nothing to it. If you replaced the image yourself, "
                + "remove luks-header.json and luks-uuid in the target's state directory")
    }

    private static func compare(_ seen: HeaderPin, with pinned: HeaderPin, copy: LUKS2MetadataCopy)
        throws(ImgBackupError)
    {
        if seen.uuid != pinned.uuid {
            throw notOurs("its LUKS UUID is \(seen.uuid), but this target's image has \(pinned.uuid)")
        }
        if seen.digests != pinned.digests {
            throw notOurs("its header (copy at offset \(copy.offset)) binds another volume key than the one made here")
        }
        if seen.segment != pinned.segment {
            throw notOurs(
                "its header (copy at offset \(copy.offset)) encrypts the data differently than the one made here")
        }
        if !seen.keyslotEncryption.isEmpty, seen.keyslotEncryption != pinned.keyslotEncryption {
            throw notOurs("a keyslot is encrypted with \(seen.keyslotEncryption), not \(pinned.keyslotEncryption)")
        }
    }

    /// One copy's pin and keyslot areas, with the rules that hold for every
    /// image imgbackup makes, pin or no pin.
    private static func parse(
        _ copy: LUKS2MetadataCopy, device: String
    ) throws(ImgBackupError) -> (pin: HeaderPin, areas: [(offset: UInt64, length: UInt64)], dataOffset: UInt64) {
        func bad(_ reason: String) -> ImgBackupError {
            notOurs("its LUKS2 metadata (copy at offset \(copy.offset)) \(reason)")
        }
        guard let text = copy.json, let data = text.data(using: .utf8),
            let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { throw bad("is not readable JSON") }
        guard let segments = root["segments"] as? [String: Any], segments.count == 1,
            let segment = segments["0"] as? [String: Any], segment["type"] as? String == "crypt",
            let segmentEncryption = segment["encryption"] as? String,
            let dataOffset = (segment["offset"] as? String).flatMap(UInt64.init), dataOffset <= maximumDataOffset
        else { throw bad("does not have exactly one encrypted data segment") }
        if isNull(segmentEncryption) { throw bad("leaves the data unencrypted (\(segmentEncryption))") }
        if let config = root["config"] as? [String: Any], let requirements = config["requirements"] as? [String: Any],
            let mandatory = requirements["mandatory"] as? [Any], !mandatory.isEmpty
        {
            throw bad("has requirements this tool never sets (such as an unfinished re-encryption)")
        }
        guard let digestObjects = root["digests"] as? [String: Any], !digestObjects.isEmpty else {
            throw bad("has no digest of the volume key")
        }
        var digests: [String] = []
        for case let (_, digest as [String: Any]) in digestObjects {
            var bound = digest
            bound["keyslots"] = nil
            guard let canonical = canonicalJSON(bound) else { throw bad("has an unreadable digest") }
            digests.append(canonical)
        }
        guard let keyslots = root["keyslots"] as? [String: Any] else { throw bad("has no keyslot list") }
        var encryption: String?
        var areas: [(offset: UInt64, length: UInt64)] = []
        for (slot, value) in keyslots.sorted(by: { $0.key < $1.key }) {
            guard let keyslot = value as? [String: Any], keyslot["type"] as? String == "luks2",
                let area = keyslot["area"] as? [String: Any], area["type"] as? String == "raw",
                let areaEncryption = area["encryption"] as? String,
                let offset = (area["offset"] as? String).flatMap(UInt64.init),
                let length = (area["size"] as? String).flatMap(UInt64.init)
            else { throw bad("has a keyslot (\(slot)) of a kind this tool never makes") }
            if isNull(areaEncryption) {
                throw bad("keeps keyslot \(slot)'s key unencrypted (\(areaEncryption))")
            }
            // Inside the header's own space: the detached copy reads exactly these bytes.
            let (end, overflow) = offset.addingReportingOverflow(length)
            guard !overflow, length <= maximumAreaLength, offset >= 2 * copy.size, end <= dataOffset else {
                throw bad("puts keyslot \(slot)'s area outside the header")
            }
            if let encryption, encryption != areaEncryption {
                throw bad("encrypts its keyslots in different ways")
            }
            encryption = areaEncryption
            areas.append((offset, length))
        }
        guard let canonicalSegment = canonicalJSON(segment) else { throw bad("has an unreadable data segment") }
        let pin = HeaderPin(
            uuid: copy.uuid, segment: canonicalSegment, digests: digests.sorted(), keyslotEncryption: encryption ?? "")
        return (pin, areas, dataOffset)
    }

    /// cipher_null in any spelling ("cipher_null-ecb", "cipher_null"): no encryption at all.
    static func isNull(_ encryption: String) -> Bool {
        encryption.lowercased().contains("null")
    }

    private static func canonicalJSON(_ object: [String: Any]) -> String? {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}
