import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

/// Key sources other than a file, with the real runner and real commands.
@Suite struct KeyLoaderTests {
    let runner = SubprocessCommandRunner()

    private func load(_ source: Target.KeySource, environment: [String: String] = [:]) async throws(ImgBackupError)
        -> [UInt8]
    {
        let key = try await KeyLoader.load(source, target: "offsite", runner: runner, environment: environment)
        return key.withUnsafeBytes { Array($0) }
    }

    @Test func aKeyCommandsStdoutIsTheKeyEveryByteIncluded() async throws {
        #expect(try await load(.command(["printf", "pass phrase\\n"])) == Array("pass phrase\n".utf8))
    }

    @Test func aKeyCommandSeesOnlyTheVariablesItsAgentNeeds() async throws {
        let key = try await load(
            .command(["sh", "-c", "printf '%s|%s|%s' \"$HOME\" \"$GNUPGHOME\" \"$AWS_SECRET_ACCESS_KEY\""]),
            environment: ["HOME": "/root", "GNUPGHOME": "/root/.gnupg", "AWS_SECRET_ACCESS_KEY": "other"])
        #expect(key == Array("/root|/root/.gnupg|".utf8))
    }

    @Test func aFailingKeyCommandSaysSoWithItsOwnErrorAndNeverItsOutput() async throws {
        let keyPath = "/tmp/imgbackup-half-key-\(getpid())"
        try Data("half-a-key".utf8).write(to: URL(fileURLWithPath: keyPath))
        defer { try? FileManager.default.removeItem(atPath: keyPath) }
        let error = await #expect(throws: ImgBackupError.self) {
            try await load(
                .command(["sh", "-c", "cat \"$0\"; echo 'gpg: decryption failed: No secret key' >&2; exit 2", keyPath]))
        }
        #expect(error?.code == .badKey)
        #expect(error?.message.contains("key_command sh -c") == true)
        #expect(error?.message.contains("gpg: decryption failed: No secret key") == true)
        #expect(error?.description.contains("half-a-key") == false)
    }

    @Test func aKeyCommandThatPrintsNothingIsRefused() async {
        let error = await #expect(throws: ImgBackupError.self) { try await load(.command(["true"])) }
        #expect(error?.message == "refusing the output of key_command true: it is empty")
    }

    @Test func aMissingKeyCommandIsOneLine() async {
        let error = await #expect(throws: ImgBackupError.self) {
            try await load(.command(["/nonexistent/pass", "show"]))
        }
        #expect(error?.code == .badKey)
        #expect(error?.message.contains("/nonexistent/pass") == true)
    }

    @Test func aTargetWithoutAKeySourceSaysWhereAKeyCanComeFrom() async {
        let error = await #expect(throws: ImgBackupError.self) { try await load(.unset) }
        #expect(error?.code == .config)
        #expect(error?.description.contains("--key-file") == true)
        #expect(error?.description.contains("credential imgbackup.offsite") == true)
    }

    @Test func aLooseCredentialFileIsRefusedNamingTheCredential() async throws {
        let directory = "/tmp/imgbackup-credential-\(getpid())"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/imgbackup.offsite"
        _ = FileManager.default.createFile(
            atPath: path, contents: Data("k".utf8), attributes: [.posixPermissions: 0o644])
        let error = await #expect(throws: ImgBackupError.self) { try await load(.credential(path)) }
        #expect(error?.message.hasPrefix("refusing systemd credential \(path)") == true)
        chmod(path, 0o400)
        #expect(try await load(.credential(path)) == Array("k".utf8))
    }
}
