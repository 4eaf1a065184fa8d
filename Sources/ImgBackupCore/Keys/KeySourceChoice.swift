import Foundation

/// Which key source a command uses. Precedence, highest first:
///
/// 1. `--key-file FILE` (`-`: standard input, never a terminal) or `--key-fd N`;
/// 2. the systemd credential `imgbackup.TARGET` in `$CREDENTIALS_DIRECTORY`
///    (`LoadCredential=`, `LoadCredentialEncrypted=`);
/// 3. the target's `key_file` or `key_command` in the config.
public struct KeySourceChoice: Sendable {
    /// `--key-file`, as given.
    public var keyFile: String?
    /// `--key-fd`.
    public var keyDescriptor: Int32?

    public init(keyFile: String? = nil, keyDescriptor: Int32? = nil) {
        self.keyFile = keyFile
        self.keyDescriptor = keyDescriptor
    }

    /// `target` with the key source that wins. `credentialsDirectory` is
    /// `$CREDENTIALS_DIRECTORY`; `standardInputIsTerminal` refuses
    /// `--key-file -` from a person's terminal (the key would echo).
    public func resolve(
        _ target: Target, credentialsDirectory: String?, standardInputIsTerminal: Bool
    ) throws(ImgBackupError) -> Target {
        var target = target
        if let keyFile {
            if keyFile == "-" {
                guard !standardInputIsTerminal else {
                    throw ImgBackupError(
                        .usage, "refusing to read the key from a terminal",
                        hint: "pipe it in: pass show imgbackup/\(target.name) | imgbackup ... --key-file -")
                }
                target.key = .descriptor(0)
            } else {
                target.key = .file(URL(fileURLWithPath: keyFile).standardizedFileURL.path)
            }
        } else if let keyDescriptor {
            target.key = .descriptor(keyDescriptor)
        } else if let directory = credentialsDirectory, !directory.isEmpty {
            let credential = "\(directory)/imgbackup.\(target.name)"
            if FileManager.default.fileExists(atPath: credential) { target.key = .credential(credential) }
        }
        return target
    }
}
