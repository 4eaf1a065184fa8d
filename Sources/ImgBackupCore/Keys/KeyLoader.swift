import ImgBackupOS

/// Loads a target's key into wiped-after-use memory, or says in one line why
/// not. The key reaches libcryptsetup from that memory only: never argv, the
/// environment, a log line or a file of ours.
public enum KeyLoader {
    /// A key command may wait for a person (a pinentry) or an agent.
    static let commandLimit: Duration = .seconds(120)
    /// What a key command sees of our environment: what `pass`, gpg and
    /// secret-tool need to find their agent and store. Never key material.
    static let commandEnvironmentNames = [
        "HOME", "USER", "LOGNAME", "GNUPGHOME", "GPG_TTY", "PASSWORD_STORE_DIR", "XDG_RUNTIME_DIR",
        "DBUS_SESSION_BUS_ADDRESS", "CREDENTIALS_DIRECTORY",
    ]

    public static func load(
        _ source: Target.KeySource, target: String, runner: any CommandRunning,
        environment: [String: String] = [:]
    ) async throws(ImgBackupError) -> SecureBytes {
        switch source {
        case .file(let path):
            do {
                return try KeyFile.read(path: path)
            } catch {
                throw message(for: error, what: "key file \(path)", fix: "chmod 600 \(path)")
            }
        case .credential(let path):
            do {
                return try KeyFile.read(path: path)
            } catch {
                throw message(
                    for: error, what: "systemd credential \(path)", fix: "check LoadCredential= in the service unit")
            }
        case .descriptor(let fd):
            let name = fd == 0 ? "the key on standard input" : "the key on descriptor \(fd)"
            do {
                return try KeyFile.read(descriptor: fd, name: name)
            } catch {
                throw message(for: error, what: name, fix: "")
            }
        case .command(let argv):
            return try await runKeyCommand(argv, runner: runner, environment: environment)
        case .unset:
            throw ImgBackupError(
                .config, "target '\(target)' has no key",
                hint:
                    "set key_file or key_command in [target.\(target)], pass --key-file or --key-fd, or give the service the credential imgbackup.\(target)"
            )
        }
    }

    private static func runKeyCommand(
        _ argv: [String], runner: any CommandRunning, environment: [String: String]
    ) async throws(ImgBackupError) -> SecureBytes {
        let display = argv.joined(separator: " ")
        let capture: KeyCapture
        var command = Command(
            argv[0], Array(argv.dropFirst()), timeout: commandLimit,
            environment: environment.filter { commandEnvironmentNames.contains($0.key) })
        do {
            capture = try KeyCapture()
            command.outputDescriptor = try capture.childDescriptor()
        } catch {
            throw ImgBackupError(.system, "failed to run key_command \(display): \(error)")
        }
        let result: CommandResult
        do {
            result = try await runner.run(command)
        } catch {
            throw ImgBackupError.wrapping(error, .badKey, failedTo: "run key_command \(display)")
        }
        guard result.succeeded else {
            // Only stderr: stdout was the key's place.
            throw ImgBackupError(.badKey, "key_command \(display) failed: \(result.failureSummary)")
        }
        do {
            return try capture.take(name: "the output of key_command \(display)")
        } catch {
            throw message(for: error, what: "the output of key_command \(display)", fix: "")
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
        case .foreignOwner(let uid): "it belongs to another user (uid \(uid))"
        case .looseDirectory(let directory, let mode):
            "others can replace it: its directory \(directory) is writable by group or others or not ours (mode \(String(mode, radix: 8)))"
        }
    }

    static func message(for problem: KeyFileProblem, what: String, fix: String) -> ImgBackupError {
        switch problem {
        case .loosePermissions:
            return ImgBackupError(.badKey, "refusing \(what): \(describe(problem))", hint: fix.isEmpty ? nil : fix)
        case .foreignOwner:
            return ImgBackupError(
                .badKey, "refusing \(what): \(describe(problem))", hint: "chown root: it, or keep the key elsewhere")
        case .looseDirectory:
            return ImgBackupError(
                .badKey, "refusing \(what): \(describe(problem))",
                hint: "keep key files in a directory only root can write, such as /etc/imgbackup/keys (mode 700)")
        case .unreadable:
            return ImgBackupError(.badKey, "failed to read \(what): \(describe(problem))")
        case .notRegularFile, .empty, .tooLarge:
            return ImgBackupError(.badKey, "refusing \(what): \(describe(problem))")
        }
    }
}
