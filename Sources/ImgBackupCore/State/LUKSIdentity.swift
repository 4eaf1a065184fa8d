import Foundation
import ImgBackupOS

/// What each target's image must be, kept on the client, so `open` can tell
/// that the remote still holds the image `init` made: the LUKS UUID
/// (`luks-uuid`, since the first version) and the header pin
/// (`luks-header.json`: volume-key digest, segment, keyslot encryption).
struct LUKSIdentity {
    let paths: RuntimePaths

    func recordedUUID(for target: String) -> String? {
        guard let text = try? String(contentsOfFile: paths.luksUUIDFile(target), encoding: .utf8) else { return nil }
        let uuid = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return uuid.isEmpty ? nil : uuid
    }

    func recordedPin(for target: String) -> HeaderPin? {
        guard let data = FileManager.default.contents(atPath: paths.headerPinFile(target)) else { return nil }
        return try? JSONDecoder().decode(HeaderPin.self, from: data)
    }

    /// What the image must match before it is unlocked.
    func expectation(for target: String) -> HeaderExpectation {
        if let pin = recordedPin(for: target) { return .pinned(pin) }
        if let uuid = recordedUUID(for: target) { return .uuidOnly(uuid) }
        return .firstUse
    }

    func record(_ pin: HeaderPin, for target: String) throws(ImgBackupError) {
        do {
            try LocalFiles.makeDirectories(paths.targetStateDirectory(target))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(pin).write(to: URL(fileURLWithPath: paths.headerPinFile(target)), options: .atomic)
            try (pin.uuid + "\n").write(toFile: paths.luksUUIDFile(target), atomically: true, encoding: .utf8)
        } catch {
            throw ImgBackupError.wrapping(
                error, .system, failedTo: "record the LUKS header pin in \(paths.headerPinFile(target))")
        }
    }
}
