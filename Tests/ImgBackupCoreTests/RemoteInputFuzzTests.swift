import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

/// What the backup host sends, as random or hostile as it likes: lock files,
/// LUKS2 metadata, sftp's df output. Parsing it ends in a value or a typed
/// error, never a trap (a trap would leave the stack up, as root).
/// Deterministic (a fixed seed), so a failure replays.
@Suite struct RemoteInputFuzzTests {
    static let pieces = [
        "host=", "pid=", "token=", "target=", "since=", "\n", "\r\n", "=", "\u{1b}[2J", "\u{202e}", "\0", "-1",
        "99999999999999999999", "2147483648", "\u{ff}", "é", " ", "host=a\npid=1\ntoken=t\n",
    ]

    @Test func lockFilesOfAnyShapeParseOrAreRefused() {
        var random = SeededGenerator(state: 17)
        for _ in 0..<5000 {
            let text = (0..<Int.random(in: 0...12, using: &random)).map { _ in
                Self.pieces.randomElement(using: &random)!
            }.joined()
            if let holder = RemoteLockHolder.parse(text) {
                // Printed escaped: one line whatever it held.
                #expect(!holder.description.escapingControlCharacters.contains("\n"))
                #expect(!holder.description.escapingControlCharacters.contains("\u{1b}"))
            }
        }
    }

    /// Values of every JSON type, as JSON text.
    static let values = [
        #""cipher_null-ecb""#, #""aes-xts-plain64""#, #""""#, #""18446744073709551615""#, #""-1""#, #""16777216""#,
        #""0""#,
        "4096", "-1", "9223372036854775807", "1.7976931348623157e308", "null", "[]", #"{"a":"b"}"#, "true",
    ]
    static let keys = [
        ["segments", "0", "offset"], ["segments", "0", "encryption"], ["segments", "0"], ["segments"],
        ["keyslots", "0", "area", "offset"], ["keyslots", "0", "area", "size"], ["keyslots", "0", "area"],
        ["keyslots", "0", "type"],
        ["keyslots", "7"], ["digests", "0", "salt"], ["digests", "0"], ["digests"], ["config", "requirements"],
        ["config", "requirements", "mandatory"],
    ]

    /// A real header, edited at random places with values of every JSON type.
    @Test func luks2MetadataOfAnyShapeIsCheckedOrRefused() throws {
        let scratch = makeScratchDirectory("fuzz")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let image = try HeaderPinTests.image(scratch)
        let pin = try CheckedHeader.read(device: image, expected: .firstUse).pin
        let values = try Self.values.map {
            try JSONSerialization.jsonObject(with: Data($0.utf8), options: .fragmentsAllowed)
        }
        var random = SeededGenerator(state: 42)
        var refused = 0
        for round in 0..<600 {
            let copies = try HeaderPinTests.forged(image) { root in
                for _ in 0...Int.random(in: 0...3, using: &random) {
                    HeaderPinTests.edit(
                        &root, Self.keys.randomElement(using: &random)!, values.randomElement(using: &random)!)
                }
            }
            for expected in [HeaderExpectation.pinned(pin), .firstUse] {
                do {
                    let checked = try CheckedHeader(copies: copies, expected: expected, device: image)
                    #expect(checked.dataOffset <= CheckedHeader.maximumDataOffset)
                    #expect(
                        checked.keyslotAreas.allSatisfy {
                            $0.length <= CheckedHeader.maximumAreaLength && $0.offset + $0.length <= checked.dataOffset
                        })
                    #expect(!CheckedHeader.isNull(checked.pin.keyslotEncryption), "round \(round)")
                } catch {
                    #expect(error.code == .luks)
                    refused += 1
                }
            }
        }
        #expect(refused > 300, "the edits should mostly break the header")
        // Bytes that are not JSON at all.
        for _ in 0..<300 {
            let text = String(
                decoding: (0..<Int.random(in: 0...200, using: &random)).map { _ in
                    UInt8.random(in: 0...255, using: &random)
                }, as: UTF8.self)
            let copy = LUKS2MetadataCopy(offset: 0, size: 16384, sequenceID: 1, uuid: pin.uuid, json: text)
            #expect(throws: ImgBackupError.self) {
                try CheckedHeader(copies: [copy], expected: .firstUse, device: image)
            }
        }
    }

    /// sftp's `df` answer, with numbers as large as the server likes.
    @Test(arguments: ["18446744073709551615", "99999999999999999999", "-5", "0", "abc"])
    func dfNumbersSaturate(available: String) {
        let output =
            "sftp> df .\n        Size         Used        Avail       (root)    %Capacity\n 1 2 \(available) 4 5%\n"
        let result = CommandResult(
            executable: "sftp", termination: .exited(0), standardOutput: output, standardError: "")
        _ = SystemInspector.parse(result, image: "x.img")
    }
}
