import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

/// The header pin on real LUKS2 headers made by libcryptsetup on a plain
/// file (no device-mapper needed), with the metadata edited the way a
/// hostile backup host would edit it. The attacks end to end, against a
/// real unlock: e2e/test_hostile_host.py.
@Suite struct HeaderPinTests {
    static let cheap = PBKDFSettings(kind: .pbkdf2, forcedIterations: 1000)

    static func key(_ text: String) -> SecureBytes {
        var bytes = Array(text.utf8)
        return SecureBytes(consuming: &bytes)
    }

    /// A fresh 32 MiB LUKS2 image in a scratch directory.
    static func image(_ scratch: String, _ name: String = "image", key: String = "right key") throws -> String {
        let path = "\(scratch)/\(name)"
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.truncate(atOffset: 32 << 20)
        try handle.close()
        _ = try CryptDevice(devicePath: path).formatLUKS2(key: Self.key(key), pbkdf: cheap)
        return path
    }

    /// The copies of `image` with `edit` applied to each one's JSON.
    static func forged(_ image: String, _ edit: (inout [String: Any]) -> Void) throws -> [LUKS2MetadataCopy] {
        try LUKS2Metadata.readCopies(device: image).map { copy in
            let text = try #require(copy.json)
            var root = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
            edit(&root)
            let edited = String(decoding: try JSONSerialization.data(withJSONObject: root), as: UTF8.self)
            return LUKS2MetadataCopy(
                offset: copy.offset, size: copy.size, sequenceID: copy.sequenceID, uuid: copy.uuid, json: edited)
        }
    }

    static func edit(_ root: inout [String: Any], _ path: [String], _ value: Any) {
        func set(_ object: inout [String: Any], _ path: ArraySlice<String>) {
            guard let first = path.first else { return }
            if path.count == 1 {
                object[first] = value
            } else {
                var child = object[first] as? [String: Any] ?? [:]
                set(&child, path.dropFirst())
                object[first] = child
            }
        }
        set(&root, path[...])
    }

    @Test func theHeaderInitMadeMatchesItsPinInBothCopies() throws {
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try Self.image(scratch)
        let pin = try CheckedHeader.read(device: image, expected: .firstUse).pin
        let checked = try CheckedHeader.read(device: image, expected: .pinned(pin))
        #expect(checked.copies.map(\.offset) == [0, 16384])
        #expect(pin.keyslotEncryption == "aes-xts-plain64")
        #expect(
            pin.segment.contains("\"encryption\":\"aes-xts-plain64\"") && pin.segment.contains("\"sector_size\":4096"))
        #expect(pin.digests.count == 1 && !pin.digests[0].contains("keyslots"))
        #expect(checked.keyslotAreas.count == 1 && checked.dataOffset == 16 << 20)
    }

    @Test func aKeyAddedOrRemovedKeepsThePin() throws {
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try Self.image(scratch)
        let pin = try CheckedHeader.read(device: image, expected: .firstUse).pin
        let crypt = try CryptDevice(devicePath: image)
        try crypt.load()
        try crypt.addKeyslot(existingKey: Self.key("right key"), newKey: Self.key("second"), pbkdf: Self.cheap)
        try crypt.destroyKeyslot(0)
        #expect(try CheckedHeader.read(device: image, expected: .pinned(pin)).keyslotAreas.count == 1)
    }

    /// Another header with the same UUID: the host formatted it with a volume key of its own.
    @Test func aHeaderWithTheSameUUIDAndAnotherVolumeKeyIsRefused() throws {
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let ours = try Self.image(scratch)
        let pin = try CheckedHeader.read(device: ours, expected: .firstUse).pin
        let theirs = try Self.image(scratch, "theirs", key: "attacker")
        let copies = try LUKS2Metadata.readCopies(device: theirs).map {
            LUKS2MetadataCopy(
                offset: $0.offset, size: $0.size, sequenceID: $0.sequenceID, uuid: pin.uuid, json: $0.json)
        }
        let error = #expect(throws: ImgBackupError.self) {
            try CheckedHeader(copies: copies, expected: .pinned(pin), device: theirs)
        }
        #expect(error?.code == .luks)
        #expect(
            error?.message.contains(
                "not the one this machine created: its header (copy at offset 0) binds another volume key") == true)
    }

    /// What the host changes (a path in the metadata, the new value as JSON) and what the refusal says.
    static let forgeries: [(what: String, path: [String], json: String, says: String)] = [
        (
            "keyslot cipher_null", ["keyslots", "0", "area", "encryption"], #""cipher_null-ecb""#,
            "keeps keyslot 0's key unencrypted"
        ),
        ("segment cipher_null", ["segments", "0", "encryption"], #""cipher_null-ecb""#, "leaves the data unencrypted"),
        ("segment sector size", ["segments", "0", "sector_size"], "512", "encrypts the data differently"),
        (
            "second segment", ["segments", "1"], #"{"type":"linear","offset":"0","size":"dynamic"}"#,
            "exactly one encrypted data segment"
        ),
        (
            "keyslot other cipher", ["keyslots", "0", "area", "encryption"], #""serpent-xts-plain64""#,
            "a keyslot is encrypted with serpent"
        ),
        ("keyslot area over the data", ["keyslots", "0", "area", "offset"], #""16777216""#, "outside the header"),
        ("keyslot area huge", ["keyslots", "0", "area", "size"], #""18446744073709551615""#, "outside the header"),
        ("reencrypt keyslot", ["keyslots", "0", "type"], #""reencrypt""#, "of a kind this tool never makes"),
        (
            "requirements", ["config", "requirements", "mandatory"], #"["online-reencrypt-v2"]"#,
            "requirements this tool never sets"
        ),
        (
            "digest salt", ["digests", "0", "salt"], #""AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=""#,
            "binds another volume key"
        ),
    ]

    @Test(arguments: 0..<Self.forgeries.count) func aForgedHeaderIsRefused(index: Int) throws {
        let forgery = Self.forgeries[index]
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try Self.image(scratch)
        let pin = try CheckedHeader.read(device: image, expected: .firstUse).pin
        let value = try JSONSerialization.jsonObject(with: Data(forgery.json.utf8), options: .fragmentsAllowed)
        let copies = try Self.forged(image) { Self.edit(&$0, forgery.path, value) }
        for expected in [HeaderExpectation.pinned(pin), .firstUse] {
            do {
                _ = try CheckedHeader(copies: copies, expected: expected, device: image)
                // Without a pin only what no imgbackup image ever has is refused.
                #expect(
                    !(expected.pin != nil
                        || !["segment sector size", "keyslot other cipher", "digest salt"].contains(forgery.what)),
                    "\(forgery.what) passed")
            } catch {
                #expect(error.code == .luks)
                #expect(error.message.contains("not the one this machine created"), "\(forgery.what): \(error.message)")
                #expect(error.message.contains(forgery.says), "\(forgery.what): \(error.message)")
            }
        }
    }

    @Test func copiesThatDisagreeOrDoNotParseAreRefused() throws {
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try Self.image(scratch)
        let copies = try LUKS2Metadata.readCopies(device: image)
        let secondary = try Self.forged(image) {
            Self.edit(&$0, ["keyslots", "0", "area", "encryption"], "twofish-xts-plain64")
        }[1]
        let disagree = #expect(throws: ImgBackupError.self) {
            try CheckedHeader(copies: [copies[0], secondary], expected: .firstUse, device: image)
        }
        #expect(disagree?.message.contains("its two LUKS2 metadata copies disagree") == true)
        let garbage = LUKS2MetadataCopy(
            offset: 0, size: copies[0].size, sequenceID: 9, uuid: copies[0].uuid, json: "{\"keyslots\":")
        let unreadable = #expect(throws: ImgBackupError.self) {
            try CheckedHeader(copies: [garbage, copies[1]], expected: .firstUse, device: image)
        }
        #expect(unreadable?.message.contains("is not readable JSON") == true)
    }

    /// libcryptsetup unlocks from the checked local copy, not from the device.
    @Test func theDetachedCopyUnlocksWithTheKeyAndIsRemovedAfterwards() throws {
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try Self.image(scratch)
        let header = try CheckedHeader.read(device: image, expected: .firstUse)
        let detached = "\(scratch)/detached"
        let slot = try LUKS2Metadata.withDetachedHeader(
            from: image, copies: header.copies, areas: header.keyslotAreas, length: header.dataOffset, at: detached
        ) { () throws -> Int in
            #expect(try FileManager.default.attributesOfItem(atPath: detached)[.posixPermissions] as? Int == 0o600)
            let crypt = try CryptDevice(devicePath: image, detachedHeader: detached)
            try crypt.load()
            #expect(crypt.uuid == header.pin.uuid)
            #expect(throws: CryptSetupError.self) { try crypt.activate(name: nil, key: Self.key("wrong key")) }
            return try crypt.activate(name: nil, key: Self.key("right key"))
        }
        #expect(slot == 0)
        #expect(!FileManager.default.fileExists(atPath: detached))
    }

    /// The remote answers the check with one header and the next read with
    /// another: the detached copy holds what was checked, byte for byte.
    @Test func theDetachedCopyHoldsTheCheckedBytesWhateverTheDeviceSaysNext() throws {
        let scratch = makeScratchDirectory("pin")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try Self.image(scratch)
        let header = try CheckedHeader.read(device: image, expected: .firstUse)
        // After the check, the "remote" changes both metadata copies.
        let handle = try #require(FileHandle(forWritingAtPath: image))
        try handle.seek(toOffset: 0)
        handle.write(Data(count: Int(2 * header.copies[0].size)))
        try handle.close()
        let detached = "\(scratch)/detached"
        try LUKS2Metadata.withDetachedHeader(
            from: image, copies: header.copies, areas: header.keyslotAreas, length: header.dataOffset, at: detached
        ) { () throws in
            let written = try #require(FileManager.default.contents(atPath: detached))
            for copy in header.copies {
                #expect(Array(written[Int(copy.offset)..<Int(copy.offset + copy.size)]) == copy.raw)
            }
            let crypt = try CryptDevice(devicePath: image, detachedHeader: detached)
            try crypt.load()
            #expect(try crypt.activate(name: nil, key: Self.key("right key")) == 0)
        }
    }
}
