import Foundation
import ImgBackupOS

/// The user's own command: `command` from the copy table, with `{mount}` and
/// `{target}` replaced in each argument, and the same two values in the
/// environment as IMGBACKUP_MOUNT and IMGBACKUP_TARGET. Run as an argv, never
/// through a shell. It makes no backup points imgbackup knows, so retention
/// is the command's own business.
struct CommandCopy: CopyMethod {
    func copy(_ context: CopyContext) async throws(ImgBackupError) -> CopyOutcome {
        let argv = Self.substitute(context.copy.command ?? [], mount: context.mountPoint, target: context.target.name)
        guard let executable = argv.first else { throw ImgBackupError(.config, "the copy command is empty") }
        context.logger.info("running the copy command \(executable)")
        var command = Command(executable, Array(argv.dropFirst()), timeout: CopyContext.stepLimit)
        command.environment = Self.environment(mount: context.mountPoint, target: context.target.name)
        let result = try await context.run(command)
        guard result.succeeded else {
            throw ImgBackupError(.copyFailed, "the copy step failed: \(result.failureSummary)")
        }
        return CopyOutcome()
    }

    func prune(_ context: CopyContext, policy: RetentionPolicy) async throws(ImgBackupError) -> [String] {
        context.logger.info("retention does not apply to the command method: the command keeps what it keeps")
        return []
    }

    func points(_ context: CopyContext) async throws(ImgBackupError) -> [BackupPoint] {
        throw Self.unknownPoints(context.target.name)
    }

    func restore(_ context: CopyContext, point: BackupPoint, paths: [String], into directory: String)
        async throws(ImgBackupError)
    {
        throw Self.unknownPoints(context.target.name)
    }

    static func unknownPoints(_ target: String) -> ImgBackupError {
        ImgBackupError(
            .usage, "target '\(target)' copies with its own command: imgbackup does not know its backup points",
            hint: "'imgbackup open --read-only \(target)' mounts the image without changing it; look there")
    }

    static func substitute(_ argv: [String], mount: String, target: String) -> [String] {
        argv.map {
            $0.replacingOccurrences(of: "{mount}", with: mount).replacingOccurrences(of: "{target}", with: target)
        }
    }

    static func environment(mount: String, target: String) -> [String: String] {
        ["IMGBACKUP_MOUNT": mount, "IMGBACKUP_TARGET": target]
    }
}
