import Foundation
import ImgBackupOS

/// The LUKS UUID of each target's image, kept on the client, so `open` can
/// tell that the remote still holds the image `init` made.
struct LUKSIdentity {
    let paths: RuntimePaths

    func recorded(for target: String) -> String? {
        guard let text = try? String(contentsOfFile: paths.luksUUIDFile(target), encoding: .utf8) else { return nil }
        let uuid = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return uuid.isEmpty ? nil : uuid
    }

    func record(_ uuid: String, for target: String) throws(ImgBackupError) {
        do {
            try LocalFiles.makeDirectories(paths.targetStateDirectory(target))
            try (uuid + "\n").write(toFile: paths.luksUUIDFile(target), atomically: true, encoding: .utf8)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "record the LUKS UUID in \(paths.luksUUIDFile(target))")
        }
    }
}
