import Foundation
import ImgBackupOS

/// The check the dirty marker calls for (DirtyMarker). After a hang, a forced
/// close, or a crash whose leftovers needed force, the next `open` checks
/// the filesystem before mounting it (ext4: `e2fsck -f -p`; btrfs: `btrfs
/// check --readonly`) and says what it found.
struct FilesystemCheck {
    let target: Target
    let environment: OperationEnvironment

    /// A filesystem check of an image over a slow link may take long.
    static let checkLimit: Duration = .seconds(6 * 3600)

    var marker: DirtyMarker { DirtyMarker(paths: environment.paths, target: target.name) }

    /// A read-only open checks nothing and replays nothing (both would
    /// write): says what that leaves out. A read of the superblock that
    /// fails here fails the mount next, with its own line.
    func sayWhatReadingSkips(device: String, deadline: Duration) async {
        let name = target.name
        if marker.isSet {
            environment.logger.notice(
                "the last session of '\(name)' did not end cleanly (\(marker.setBy ?? "unknown")): a read-only open does not check its filesystem; the next read-write open does"
            )
        }
        let found = FilesystemProbe.Found(rawValue: target.filesystem.rawValue) ?? .none
        if (try? await FilesystemProbe.journalNeedsReplay(device: device, found: found, deadline: deadline)) == true {
            environment.logger.notice(
                "the \(target.filesystem.rawValue) journal of '\(name)' holds writes that were never replayed: a read-only open does not show them (the newest files of the last session may be missing); the next read-write open replays them"
            )
        }
    }

    /// Checks `device` if the marker says the last session did not end
    /// cleanly. Repairs what preen mode may repair; refuses to mount a
    /// filesystem with errors it could not fix.
    func checkIfMarked(device: String) async throws(ImgBackupError) {
        guard marker.isSet else { return }
        let since = marker.setBy ?? "unknown"
        environment.logger.notice(
            "the last session of '\(target.name)' did not end cleanly (\(since)): checking its \(target.filesystem.rawValue) filesystem"
        )
        let command: Command
        switch target.filesystem {
        case .ext4: command = Command("e2fsck", ["-f", "-p", device], timeout: Self.checkLimit)
        case .btrfs: command = Command("btrfs", ["check", "--readonly", device], timeout: Self.checkLimit)
        }
        let result: CommandResult
        do {
            result = try await environment.runner.run(command)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "check the filesystem of \(target.name)")
        }
        switch (target.filesystem, result.termination) {
        case (_, .exited(0)):
            environment.logger.notice("\(command.executable): the filesystem of '\(target.name)' is clean")
        case (.ext4, .exited(let status)) where status == 1 || status == 2:
            environment.logger.notice(
                "e2fsck repaired the filesystem of '\(target.name)': \(result.outputTail(lines: 3))")
        default:
            throw ImgBackupError(
                .system,
                "the filesystem of '\(target.name)' has errors the check did not fix: \(result.failureSummary)",
                hint:
                    "run 'imgbackup open --skip-check \(target.name)', unmount \(target.mountPoint), and check /dev/mapper/\(target.mappingName) by hand"
            )
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
