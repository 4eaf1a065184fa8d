import Foundation
import ImgBackupOS

/// A borg repository inside the image (`borg/`, created on the first run),
/// one archive per run named for its time, pruned by the target's retention,
/// then compacted so the space is free again.
///
/// With `borg_passphrase_file` the repository is encrypted (repokey-blake2)
/// and borg reads the passphrase from stdin (BORG_PASSPHRASE_FD=0), fed from
/// an in-memory file: never argv or the environment. Without it the
/// repository is unencrypted; the LUKS image around it is not.
struct BorgCopy: CopyMethod {
    static let repositoryDirectory = "borg"

    func copy(_ context: CopyContext) async throws(ImgBackupError) -> CopyOutcome {
        let repository = "\(context.mountPoint)/\(Self.repositoryDirectory)"
        let passphrase = try loadPassphrase(context)
        if !FileManager.default.fileExists(atPath: "\(repository)/config") {
            let encryption = passphrase == nil ? "none" : "repokey-blake2"
            context.logger.notice(
                "creating the borg repository \(Self.repositoryDirectory)/ in the image (encryption \(encryption))")
            _ = try await context.runChecked(
                borg(["init", "--encryption=\(encryption)", repository], context, passphrase: passphrase),
                "create the borg repository")
            // borg wants a whole segment of free space (500 MiB by default)
            // before it deletes or compacts; in a small image that never
            // exists. Segments of a 32nd of the filesystem fit any image.
            let segment = Self.segmentSize(filesystemBytes: (try? LocalFiles.capacity(context.mountPoint).total) ?? 0)
            _ = try await context.runChecked(
                borg(["config", repository, "max_segment_size", String(segment)], context, passphrase: passphrase),
                "size the borg repository's segments")
        }
        let name = context.pointName
        var arguments = [
            "create", "--json", "--progress", "--numeric-ids",
            // the archive's time is the run's (an injected clock in tests)
            "--timestamp", Self.borgTimestamp(context.now),
        ]
        if context.pullsFromOtherHosts {
            // sshfs makes up inode numbers in the order paths are looked
            // up, anew each mount: keyed on them (borg's default), a pulled
            // file is read again whenever files before it came or went.
            arguments.append("--files-cache=ctime,size")
        }
        if context.copy.oneFileSystem { arguments.append("--one-file-system") }
        // pp: a path prefix (borg matches paths without their leading "/").
        for path in context.ownMounts { arguments += ["--exclude", "pp:\(path)"] }
        for pattern in context.excludePatterns { arguments += ["--exclude", pattern] }
        arguments.append("\(repository)::\(name)")
        arguments += context.sourcePaths(rooted: false)
        context.logger.info(
            "borg create \(Self.repositoryDirectory)::\(name) from \(context.copy.sources.joined(separator: " "))")
        var create = borg(arguments, context, passphrase: passphrase, step: true)
        // Pulled sources are HOST/path relative to their mounts: archived as HOST/path.
        if context.pullsFromOtherHosts { create.workingDirectory = context.sourcesDirectory }
        let result = try await context.run(create, progress: Self.progressLine)
        switch result.termination {
        case .exited(0): break
        case .exited(1):
            // borg's "warning" status: the archive is complete, a file or two
            // could not be read (vanished, permission). Say so, go on.
            context.logger.notice("borg create finished with warnings: \(result.outputTail())")
        default:
            throw ImgBackupError(.copyFailed, "the copy step failed: \(result.failureSummary)")
        }
        return CopyOutcome(
            point: "\(Self.repositoryDirectory)::\(name)", bytesCopied: Self.originalSize(result.standardOutput))
    }

    func prune(_ context: CopyContext, policy: RetentionPolicy) async throws(ImgBackupError) -> [String] {
        let repository = "\(context.mountPoint)/\(Self.repositoryDirectory)"
        let passphrase = try loadPassphrase(context)
        let listing = try await context.runChecked(
            borg(["list", "--short", repository], context, passphrase: passphrase), "list the borg archives")
        let points = listing.standardOutput.split(whereSeparator: \.isNewline).compactMap { line -> (String, Date)? in
            BackupPointName.parse(String(line)).map { (String(line), $0) }
        }
        let pruned = Set(policy.pruned(points.map(\.1)))
        let names = points.filter { pruned.contains($0.1) }.map(\.0)
        guard !names.isEmpty else { return [] }
        _ = try await context.runChecked(
            borg(["delete", repository] + names, context, passphrase: passphrase, step: true),
            "delete pruned borg archives")
        _ = try await context.runChecked(
            borg(["compact", repository], context, passphrase: passphrase, step: true), "compact the borg repository")
        return names
    }

    /// Reading (list, restore, check) bypasses borg's lock: the image is
    /// mounted read-only, where taking it would fail, and imgbackup's
    /// target lock already keeps every other imgbackup command out.
    func points(_ context: CopyContext) async throws(ImgBackupError) -> [BackupPoint] {
        let repository = "\(context.mountPoint)/\(Self.repositoryDirectory)"
        guard FileManager.default.fileExists(atPath: "\(repository)/config") else { return [] }
        let passphrase = try loadPassphrase(context)
        let listing = try await context.runChecked(
            borg(["--bypass-lock", "list", "--json", repository], context, passphrase: passphrase),
            "list the borg archives")
        guard let archives = Self.archives(listing.standardOutput) else {
            throw ImgBackupError(.copyFailed, "failed to list the borg archives: borg list --json printed no archives")
        }
        let points = archives.map { archive in
            BackupPoint(
                name: archive.name, location: "\(Self.repositoryDirectory)::\(archive.name)",
                time: BackupPointName.parse(archive.name) ?? archive.start,
                // What a killed borg create left: borg names it NAME.checkpoint(.N).
                complete: !archive.name.contains(".checkpoint"))
        }
        return context.withRunHistory(points.sorted { ($0.time ?? .distantPast) < ($1.time ?? .distantPast) })
    }

    /// borg extract, run in `directory`: borg keeps paths without their
    /// leading `/` and puts each back under its own path there.
    func restore(_ context: CopyContext, point: BackupPoint, paths: [String], into directory: String)
        async throws(ImgBackupError)
    {
        let repository = "\(context.mountPoint)/\(Self.repositoryDirectory)"
        let passphrase = try loadPassphrase(context)
        let patterns = paths.filter { $0 != "/" }.map { String($0.dropFirst()) }
        var extract = borg(
            ["--bypass-lock", "extract", "--numeric-ids", "--progress", "\(repository)::\(point.name)"]
                + (paths.contains("/") ? [] : patterns),
            context, passphrase: passphrase, step: true)
        extract.workingDirectory = directory
        do {
            try LocalFiles.makeDirectories(directory)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create \(directory)")
        }
        let result = try await context.run(extract, progress: Self.extractProgressLine)
        // borg says a path it did not find only as a warning (status 1).
        if let missing = Self.unmatched(result.standardError) {
            throw ImgBackupError(
                .usage, "restore: /\(missing) is not in \(point.location)",
                hint: "'imgbackup open --read-only \(context.target.name)' and 'borg list' show what the archive holds")
        }
        guard result.succeeded || result.termination == .exited(1) else {
            throw ImgBackupError(.copyFailed, "failed to restore from \(point.location): \(result.failureSummary)")
        }
        if !result.succeeded { context.logger.notice("borg extract finished with warnings: \(result.outputTail())") }
    }

    /// Every chunk every archive refers to, read and checked against its
    /// ID hash and MAC. `--archives-only`: borg's repository check saves
    /// the repository's config, a write the read-only mount refuses; the
    /// segment entries' checksums are checked as each chunk is read.
    func verify(_ context: CopyContext) async throws(ImgBackupError) -> Verdict? {
        let repository = "\(context.mountPoint)/\(Self.repositoryDirectory)"
        guard FileManager.default.fileExists(atPath: "\(repository)/config") else { return nil }
        let passphrase = try loadPassphrase(context)
        let result = try await context.run(
            borg(
                ["--bypass-lock", "check", "--archives-only", "--verify-data", repository], context,
                passphrase: passphrase, step: true))
        if result.succeeded {
            return Verdict(clean: true, summary: "borg check --verify-data: every archive and chunk is intact")
        }
        return Verdict(
            clean: false,
            summary:
                "borg check --verify-data found damage (\(Self.integrityFinding(result) ?? result.outputTail(lines: 2)))"
        )
    }

    /// "Finished cryptographic data integrity verification, verified 4 chunks with 1 integrity errors."
    static func integrityFinding(_ result: CommandResult) -> String? {
        let lines = (result.standardError + "\n" + result.standardOutput).split(whereSeparator: \.isNewline)
        return lines.last { $0.contains("integrity errors") || $0.hasPrefix("Data integrity error") }
            .map { $0.trimmingCharacters(in: .whitespaces) }
    }

    /// "Include pattern 'etc/nope' never matched." -> "etc/nope"
    static func unmatched(_ standardError: String) -> String? {
        for line in standardError.split(whereSeparator: \.isNewline) where line.hasSuffix("never matched.") {
            guard let open = line.firstIndex(of: "'"), let close = line.lastIndex(of: "'"), open < close else {
                continue
            }
            return String(line[line.index(after: open)..<close])
        }
        return nil
    }

    /// borg extract --progress: " 45.3% Extracting: etc/hosts"
    @Sendable static func extractProgressLine(_ line: String) -> String? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard let percent = trimmed.split(separator: " ").first, percent.hasSuffix("%") else { return nil }
        return "borg: \(percent) extracted"
    }

    /// The archives of `borg list --json`: name and start time.
    static func archives(_ json: String) -> [(name: String, start: Date?)]? {
        guard let data = json.data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let archives = object["archives"] as? [[String: Any]]
        else { return nil }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"
        return archives.compactMap { archive in
            guard let name = archive["name"] as? String else { return nil }
            return (name, (archive["start"] as? String).flatMap { formatter.date(from: $0) })
        }
    }

    private func loadPassphrase(_ context: CopyContext) throws(ImgBackupError) -> SecureBytes? {
        guard let path = context.copy.borgPassphraseFile else { return nil }
        do {
            return try KeyFile.read(path: path)
        } catch {
            throw ImgBackupError(
                .config, "failed to read borg_passphrase_file \(path): \(KeyLoader.describe(error))",
                hint: "it must be a non-empty file readable only by its owner (chmod 600)")
        }
    }

    private func borg(_ arguments: [String], _ context: CopyContext, passphrase: SecureBytes?, step: Bool = false)
        -> Command
    {
        var environment = [
            // borg's cache and security records live with imgbackup's state,
            // not in whichever HOME the service has.
            "BORG_BASE_DIR": context.environment.paths.borgBaseDirectory(context.target.name),
            // The repository is imgbackup's own, inside an image whose LUKS
            // UUID was checked; its mount point may move between machines.
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        ]
        var command = Command(
            "borg", arguments, timeout: step ? CopyContext.stepLimit : CopyContext.housekeepingLimit,
            outputLimit: 256 * 1024)
        if let passphrase {
            environment["BORG_PASSPHRASE_FD"] = "0"
            command.input = .secret(passphrase)
        }
        command.environment = environment
        return command
    }

    /// A 32nd of the filesystem, between 8 MiB and borg's default 500 MiB.
    static func segmentSize(filesystemBytes: UInt64) -> UInt64 {
        min(max(filesystemBytes / 32, 8 << 20), 500 << 20)
    }

    /// borg's --timestamp format: UTC, yyyy-mm-ddThh:mm:ss.
    static func borgTimestamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
        return formatter.string(from: date)
    }

    /// "1.23 MB O 1.00 MB C 512 kB D 12 N etc/hosts" -> "borg: 1.23 MB read, 12 files"
    @Sendable static func progressLine(_ line: String) -> String? {
        let fields = line.split(separator: " ")
        guard fields.count >= 8, fields[2] == "O", fields[5] == "C" else { return nil }
        let files = fields.count > 10 && fields[10] == "N" ? ", \(fields[9]) files" : ""
        return "borg: \(fields[0]) \(fields[1]) read\(files)"
    }

    /// The archive's original size from `borg create --json`.
    static func originalSize(_ json: String) -> UInt64? {
        guard let data = json.data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let archive = object["archive"] as? [String: Any], let stats = archive["stats"] as? [String: Any],
            let size = stats["original_size"] as? NSNumber
        else { return nil }
        return size.uint64Value
    }
}
