import Foundation
import ImgBackupOS

/// One access key for the bucket, read from an AWS shared-credentials file
/// (`[PROFILE]` with `aws_access_key_id`, `aws_secret_access_key` and maybe
/// `aws_session_token`) or from what `credentials_command` prints in that
/// format. The secret reaches curl and nbdkit only through a descriptor or a
/// 0600 file in the runtime directory, never argv, the environment or a log.
public struct S3Credentials: Sendable {
    public let accessKeyID: String
    let secretAccessKey: String
    let sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String?) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// The credentials `location` names. The file is refused as a key file
    /// is (group or others can read it, another owner, a loose directory).
    public static func load(_ location: S3Location, runner: any CommandRunning) async throws(ImgBackupError)
        -> S3Credentials
    {
        let text: String
        let origin: String
        switch location.credentials {
        case .file(let path):
            origin = path
            do {
                let bytes = try KeyFile.read(path: path)
                text = bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            } catch {
                throw ImgBackupError(
                    .config, "failed to read the S3 credentials file \(path): \(KeyLoader.describe(error))",
                    hint: "an AWS shared-credentials file, mode 0600, owned by the user running imgbackup")
            }
        case .command(let argv):
            origin = "credentials_command (\(argv[0]))"
            let result: CommandResult
            do {
                result = try await runner.run(
                    Command(argv[0], Array(argv.dropFirst()), timeout: .seconds(60), outputLimit: 64 << 10))
            } catch {
                throw ImgBackupError.wrapping(error, .config, failedTo: "run the S3 \(origin)")
            }
            guard result.succeeded else {
                // Its stderr, never its stdout: that may hold part of a key.
                throw ImgBackupError(.config, "the S3 \(origin) failed: \(result.failureSummary)")
            }
            text = result.standardOutput
        }
        return try parse(text, profile: location.profile, origin: origin)
    }

    /// Reads `[profile]` of an INI text. Errors name the origin and the
    /// missing field, never a value.
    static func parse(_ text: String, profile: String, origin: String) throws(ImgBackupError) -> S3Credentials {
        var section: String?
        var fields: [String: String] = [:]
        var sections: [String] = []
        for rawLine in text.split(whereSeparator: \.isNewline) {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                sections.append(section!)
                continue
            }
            guard section == profile, let equals = line.firstIndex(of: "=") else { continue }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            fields[name] = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
        }
        guard sections.contains(profile) else {
            throw ImgBackupError(
                .config, "the S3 credentials in \(origin) have no [\(profile)] section",
                hint: sections.isEmpty
                    ? "write them in the AWS shared-credentials format: [\(profile)], aws_access_key_id = ..., aws_secret_access_key = ..."
                    : "set profile to one of: \(sections.map { $0.escapingControlCharacters }.joined(separator: ", "))")
        }
        guard let id = fields["aws_access_key_id"], !id.isEmpty else {
            throw ImgBackupError(.config, "the S3 credentials in \(origin) [\(profile)] have no aws_access_key_id")
        }
        guard let secret = fields["aws_secret_access_key"], !secret.isEmpty else {
            throw ImgBackupError(.config, "the S3 credentials in \(origin) [\(profile)] have no aws_secret_access_key")
        }
        for value in [id, secret, fields["aws_session_token"] ?? ""]
        where value.contains(where: { $0.isNewline || $0 == "\"" || $0 == "\\" || !$0.isASCII }) {
            throw ImgBackupError(
                .config, "the S3 credentials in \(origin) [\(profile)] hold a value that is not plain ASCII text")
        }
        return S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: fields["aws_session_token"])
    }

    /// The credentials as an AWS shared-credentials file with one section,
    /// `[default]`: what the nbdkit S3 plugin (boto3) reads.
    func sharedCredentialsFile() -> SecureBytes {
        var text = "[default]\naws_access_key_id = \(accessKeyID)\naws_secret_access_key = \(secretAccessKey)\n"
        if let sessionToken { text += "aws_session_token = \(sessionToken)\n" }
        var bytes = Array(text.utf8)
        return SecureBytes(consuming: &bytes)
    }
}
