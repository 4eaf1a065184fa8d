import Foundation
import ImgBackupOS

/// `imgbackup check`: reads the image back and verifies what can be
/// verified, without changing it (a read-only open, as `list`):
/// 1. the filesystem's own check, read-only (`e2fsck -fn`; `btrfs check
///    --readonly`), which sees damaged metadata;
/// 2. every byte of every file, once per inode: btrfs checksums its data
///    and answers EIO for a damaged block, so the file is named; ext4 keeps
///    no data checksums and reads damage back as garbage (see docs/usage.md);
/// 3. the copy method's own check where it has one (`borg check
///    --verify-data`: every chunk against its MAC).
public struct CheckOperation: Sendable {
    public let target: Target
    public let environment: OperationEnvironment

    public init(target: Target, environment: OperationEnvironment) {
        self.target = target
        self.environment = environment
    }

    public struct Report: Sendable {
        /// One line per step: what it checked and what it found.
        public var steps: [String] = []
        /// Files that could not be read back, relative to the image's root, with why.
        public var unreadable: [String] = []
        /// The steps that found damage.
        public var damage: [String] = []

        /// What `check` exits with when anything is damaged (10).
        public func damageError(target: String) -> ImgBackupError? {
            guard !damage.isEmpty else { return nil }
            return ImgBackupError(
                .damaged, "the image of '\(target)' is damaged: \(damage.joined(separator: "; "))",
                hint:
                    "restore what is named from another copy, and start a new image (docs/operations.md, \"Checking backups\")"
            )
        }
    }

    /// The findings; `Report.damageError` says whether they are damage.
    public func run() async throws(ImgBackupError) -> Report {
        try await ReadOnlySession(
            target: target, environment: environment, step: "the check", withoutCopyTable: Target.Copy(method: .command)
        ).run {
            (context: CopyContext) async throws(ImgBackupError) -> Report in
            var report = Report()
            try await checkFilesystem(context, into: &report)
            readEveryFile(context, into: &report)
            if let verdict = try await CopyMethods.make(context.copy.method).verify(context) {
                report.steps.append(verdict.summary)
                if !verdict.clean { report.damage.append(verdict.summary) }
            }
            return report
        }
    }

    private func checkFilesystem(_ context: CopyContext, into report: inout Report) async throws(ImgBackupError) {
        let device = "/dev/mapper/\(target.mappingName)"
        let command =
            switch target.filesystem {
            // -n: opens the device read-only and answers no to every fix.
            case .ext4: Command("e2fsck", ["-f", "-n", device], timeout: FilesystemCheck.checkLimit)
            // Mounted (read-only): btrfs check wants --force for that.
            case .btrfs:
                Command("btrfs", ["check", "--readonly", "--force", device], timeout: FilesystemCheck.checkLimit)
            }
        let result = try await context.run(command)
        if result.succeeded {
            report.steps.append("\(command.executable): the \(target.filesystem.rawValue) filesystem is clean")
        } else {
            let finding =
                "\(command.executable) found errors in the \(target.filesystem.rawValue) filesystem (\(result.outputTail(lines: 3)))"
            report.steps.append(finding)
            report.damage.append(finding)
        }
    }

    private func readEveryFile(_ context: CopyContext, into report: inout Report) {
        var reader = TreeReader()
        let heartbeat = context.heartbeat
        let display = environment.progress
        reader.progress = { totals in
            heartbeat.beat()
            display?.update("check: \(totals.files) files, \(ByteSize.format(totals.bytes)) read")
        }
        reader.shouldStop = { Task.isCancelled }
        let read = reader.readAll(under: context.mountPoint)
        display?.finish()
        report.unreadable = read.unreadable.map { "\($0.path) (\($0.error.reason))" }
        let summary = "read \(read.files) files, \(ByteSize.format(read.bytes))"
        let count = report.unreadable.count
        if count == 0 {
            report.steps.append("\(summary): every one read back")
        } else {
            let names = report.unreadable.prefix(20).joined(separator: ", ")
            let more = count > 20 ? " and \(count - 20) more" : ""
            let finding = "\(count) file\(count == 1 ? "" : "s") could not be read back: \(names)\(more)"
            report.steps.append("\(summary); \(finding)")
            report.damage.append(finding)
        }
    }
}
