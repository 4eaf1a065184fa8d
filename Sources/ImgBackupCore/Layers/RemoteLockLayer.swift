import Foundation
import ImgBackupOS
import Logging

/// What a remote lock file says: who holds the image.
public struct RemoteLockHolder: Sendable, Equatable {
    public var host: String
    public var pid: Int32
    public var target: String
    public var since: String
    public var token: String

    var text: String { "host=\(host)\npid=\(pid)\ntarget=\(target)\nsince=\(since)\ntoken=\(token)\n" }

    static func parse(_ text: String) -> RemoteLockHolder? {
        var fields: [String: String] = [:]
        for line in text.split(whereSeparator: \.isNewline) {
            guard let equals = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        guard let host = fields["host"], let pid = fields["pid"].flatMap({ Int32($0) }), let token = fields["token"]
        else {
            return nil
        }
        return RemoteLockHolder(
            host: host, pid: pid, target: fields["target"] ?? "?", since: fields["since"] ?? "?", token: token)
    }

    var description: String { "target '\(target)' on \(host) (pid \(pid)) since \(since)" }
}

/// A lock file beside the image (`IMAGE.lock`, created with SFTP's exclusive
/// create) naming the host, pid and time, so two machines, or two targets
/// pointing at one image, never open it at once. Removed on close.
///
/// A lock this machine took and could not remove (the remote hung during
/// teardown) is recognised by its token, recorded locally, and replaced with
/// a notice. Any other lock is reported with its holder, and broken only
/// with `--break-lock`.
public struct RemoteLockLayer: Layer {
    public let path: String
    public let target: Target
    public let paths: RuntimePaths
    public let breakLock: Bool
    public let deadline: Duration
    public let logger: Logger
    let token = UUID().uuidString

    public var intent: LayerRecord { .remoteLock(path: path, token: token) }

    static func lockPath(imagePath: String) -> String { imagePath + ".lock" }

    /// Before a read-only open, which takes no lock (taking one writes to
    /// the remote): a lock someone holds means the image may be written
    /// while it is read, and a filesystem read half-written shows garbage.
    /// This machine's own stale lock is no one's; `breakLock` reads anyway,
    /// leaving the lock where it is.
    static func requireUnheldForReading(
        path: String, target: Target, paths: RuntimePaths, breakLock: Bool, deadline: Duration, logger: Logger
    ) async throws(ImgBackupError) {
        let text: String?
        do {
            text = try await MountedRemoteFiles.read(path, deadline: deadline)
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "read the remote lock \(path)")
        }
        guard let text else { return }
        let holder = RemoteLockHolder.parse(text)
        let who = holder?.description ?? "an unreadable lock file (\(path))"
        if let holder, holder.host == ProcessInfo.processInfo.hostName, holder.target == target.name,
            holder.token == RemoteLockToken(paths: paths, target: target.name).recorded
        {
            // Our caller holds the target lock and found no state record:
            // the session that took this lock is over.
            logger.notice("\(target.image) still carries this machine's own stale lock (\(who)): reading it anyway")
            return
        }
        if breakLock {
            logger.notice(
                "opening \(target.image) read-only although it is locked by \(who) (--break-lock; the lock stays): it may change while it is open"
            )
            return
        }
        throw ImgBackupError(
            .locked,
            "the image \(target.image) is locked by \(who): it may be being written, and a read-only open could see it half-written",
            hint:
                "wait for it to close; if that machine is gone for good, run again with --break-lock (a read-only open leaves the lock in place)"
        )
    }

    var recordedToken: RemoteLockToken { RemoteLockToken(paths: paths, target: target.name) }

    public func up() async throws -> LayerRecord {
        let holder = RemoteLockHolder(
            host: ProcessInfo.processInfo.hostName, pid: getpid(), target: target.name,
            since: ISO8601DateFormatter().string(from: Date()), token: token)
        let previousToken = recordedToken.recorded
        do {
            try await MountedRemoteFiles.createExclusive(path, contents: holder.text, deadline: deadline)
        } catch let error as SystemCallError where error.errno == EEXIST {
            try await replaceIfAllowed(with: holder, previousToken: previousToken)
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "lock the image (\(path))")
        }
        // Remembered only once the lock is ours: how the next open knows a
        // lock it finds is this machine's own, left by a teardown that could
        // not reach the remote.
        try recordedToken.record(token)
        return intent
    }

    private func replaceIfAllowed(with ours: RemoteLockHolder, previousToken: String?) async throws {
        let existing = RemoteLockHolder.parse(try await MountedRemoteFiles.read(path, deadline: deadline) ?? "")
        if breakLock {
            logger.notice(
                "breaking the lock on \(target.image) held by \(existing?.description ?? "an unreadable lock file") (--break-lock)"
            )
        } else if let existing {
            let here = existing.host == ours.host
            if here && existing.token == previousToken {
                // This target's own lock from an earlier session on this
                // machine (that session is over: we hold the target lock and
                // there is no state record).
                logger.notice(
                    "replacing this machine's own stale lock on \(target.image) (\(existing.description)), left by a teardown that could not reach the remote"
                )
            } else if here, (try? StateStore(paths: paths).load(target: existing.target)) ?? nil != nil {
                throw ImgBackupError(
                    .locked,
                    "the image \(target.image) is in use: target '\(existing.target)' has it open on this machine",
                    hint: "close it first: imgbackup close \(existing.target)")
            } else {
                throw ImgBackupError(
                    .locked,
                    "the image \(target.image) is locked by \(existing.description)\(here ? ", which is not open on this machine any more" : "")",
                    hint: here
                        ? "run again with --break-lock to take it over"
                        : "wait for it to close; if that machine is gone for good, run again with --break-lock")
            }
        } else {
            throw ImgBackupError(
                .locked, "the image \(target.image) is locked: \(path) exists but does not say by whom",
                hint: "if nothing uses the image, run again with --break-lock")
        }
        try await MountedRemoteFiles.remove(path, deadline: deadline)
        try await MountedRemoteFiles.createExclusive(path, contents: ours.text, deadline: deadline)
    }
}

extension RemoteLockLayer {
    static let kind = "lock"

    static func describe(path: String) -> String { "remote lock \(path)" }

    /// Removes the remote lock if it is still ours. Best effort: after a hang
    /// the remote cannot be reached, and the lock must not keep the rest of
    /// the stack up; the next open from this machine knows it as its own.
    static func down(path: String, token: String, in context: TeardownContext) async {
        let (deadline, logger) = (context.stepDeadline, context.logger)
        do {
            guard let text = try await MountedRemoteFiles.read(path, deadline: deadline) else { return }
            if text.isEmpty {
                // Created (O_EXCL) but never written: this session was
                // stopped between the two, as its record of the lock says.
                // Left there, it would lock out every later open.
                logger.notice("removing the empty lock file \(path), left by an interrupted lock")
                return try await MountedRemoteFiles.remove(path, deadline: deadline)
            }
            guard text.contains("token=\(token)") else {
                // Also the unwind after failing to take a lock someone else holds.
                logger.info("\(path) is not this session's lock: leaving it")
                return
            }
            try await MountedRemoteFiles.remove(path, deadline: deadline)
        } catch {
            logger.notice(
                "could not remove the remote lock \(path) (\(ImgBackupError.reason(of: error))): the next open from this machine replaces it"
            )
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
