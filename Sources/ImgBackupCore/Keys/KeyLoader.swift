import ImgBackupOS

/// Loads a target's key into wiped-after-use memory, or says in one line why not.
public enum KeyLoader {
    public static func load(_ source: Target.KeySource) throws(ImgBackupError) -> SecureBytes {
        switch source {
        case .file(let path):
            do {
                return try KeyFile.read(path: path)
            } catch {
                throw message(for: error, path: path)
            }
        case .command:
            throw ImgBackupError(
                .config, "key_command is not supported yet",
                hint: "use key_file for now")
        }
    }

    /// Why a secret file was refused, for a caller's own message.
    static func describe(_ problem: KeyFileProblem) -> String {
        switch problem {
        case .loosePermissions(let mode): "group or others can access it (mode \(String(mode, radix: 8)))"
        case .notRegularFile: "not a regular file"
        case .empty: "it is empty"
        case .tooLarge(let limit): "larger than \(ByteSize.format(UInt64(limit)))"
        case .unreadable(let error): error.reason
        }
    }

    static func message(for problem: KeyFileProblem, path: String) -> ImgBackupError {
        switch problem {
        case .loosePermissions(let mode):
            return ImgBackupError(
                .badKey,
                "refusing key file \(path): group or others can access it (mode \(String(mode, radix: 8)))",
                hint: "chmod 600 \(path)")
        case .notRegularFile:
            return ImgBackupError(.badKey, "refusing key file \(path): not a regular file")
        case .empty:
            return ImgBackupError(.badKey, "refusing key file \(path): it is empty")
        case .tooLarge(let limit):
            return ImgBackupError(.badKey, "refusing key file \(path): larger than \(ByteSize.format(UInt64(limit)))")
        case .unreadable(let error):
            return ImgBackupError(.badKey, "failed to read key file \(path): \(error.reason)")
        }
    }
}
