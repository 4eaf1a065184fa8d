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

    /// Each field clipped: a lock the backup host (or store) planted may hold
    /// a field as long as its read allows (4 KiB over sshfs, 64 KiB from
    /// S3), and this goes into one line of an error.
    var description: String {
        let (target, host, since) = (target.clipped(to: 100), host.clipped(to: 100), since.clipped(to: 40))
        return "target '\(target)' on \(host) (pid \(pid)) since \(since)"
    }
}

/// Where a remote lock lives: a file beside the image (`IMAGE.lock`, over
/// sshfs), or an object beside the image's objects (`PREFIX.lock`, S3).
public protocol RemoteLockStore: Sendable {
    /// The lock's place, for messages.
    var name: String { get }
    /// The lock's text; nil when there is none.
    func read() async throws -> String?
    /// Creates the lock holding `contents` unless one exists: false then.
    func createExclusive(_ contents: String) async throws -> Bool
    func remove() async throws
}

/// The lock file beside an image reached over sshfs, created with SFTP's
/// exclusive create.
struct LockFile: RemoteLockStore {
    let path: String
    let deadline: Duration

    var name: String { path }
    func read() async throws -> String? { try await MountedRemoteFiles.read(path, deadline: deadline) }
    func createExclusive(_ contents: String) async throws -> Bool {
        do {
            try await MountedRemoteFiles.createExclusive(path, contents: contents, deadline: deadline)
            return true
        } catch let error as SystemCallError where error.errno == EEXIST {
            return false
        }
    }
    func remove() async throws { try await MountedRemoteFiles.remove(path, deadline: deadline) }
}

/// A lock beside the image naming the host, pid and time, so two machines,
/// or two targets pointing at one image, never open it at once. Removed on
/// close.
///
/// A lock this machine took and could not remove (the remote hung during
/// teardown) is recognised by its token, recorded locally, and replaced with
/// a notice. Any other lock is reported with its holder, and broken only
/// with `--break-lock`.
public struct RemoteLock: Sendable {
    public let store: any RemoteLockStore
    public let target: Target
    public let paths: RuntimePaths
    public let breakLock: Bool
    public let logger: Logger
    public let token: String

    public init(
        store: any RemoteLockStore, target: Target, paths: RuntimePaths, breakLock: Bool, logger: Logger,
        token: String = UUID().uuidString
    ) {
        self.store = store
        self.target = target
        self.paths = paths
        self.breakLock = breakLock
        self.logger = logger
        self.token = token
    }

    var recordedToken: RemoteLockToken { RemoteLockToken(paths: paths, target: target.name) }

    /// Before a read-only open, which takes no lock (taking one writes to
    /// the remote): a lock someone holds means the image may be written
    /// while it is read, and a filesystem read half-written shows garbage.
    /// This machine's own stale lock is no one's; `breakLock` reads anyway,
    /// leaving the lock where it is.
    public func requireUnheldForReading() async throws(ImgBackupError) {
        let text: String?
        do {
            text = try await store.read()
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "read the remote lock \(store.name)")
        }
        guard let text else { return }
        let holder = RemoteLockHolder.parse(text)
        let who = holder?.description ?? "an unreadable lock (\(store.name))"
        if let holder, holder.host == ProcessInfo.processInfo.hostName, holder.target == target.name,
            holder.token == recordedToken.recorded
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

    /// Takes the lock, or throws `.locked` naming who has it.
    public func take() async throws {
        let holder = RemoteLockHolder(
            host: ProcessInfo.processInfo.hostName, pid: getpid(), target: target.name,
            since: ISO8601DateFormatter().string(from: Date()), token: token)
        let previousToken = recordedToken.recorded
        let created: Bool
        do {
            created = try await store.createExclusive(holder.text)
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "lock the image (\(store.name))")
        }
        if !created { try await replaceIfAllowed(with: holder, previousToken: previousToken) }
        // Remembered only once the lock is ours: how the next open knows a
        // lock it finds is this machine's own, left by a teardown that could
        // not reach the remote.
        try recordedToken.record(token)
    }

    private func replaceIfAllowed(with ours: RemoteLockHolder, previousToken: String?) async throws {
        let existing = RemoteLockHolder.parse(try await store.read() ?? "")
        if breakLock {
            logger.notice(
                "breaking the lock on \(target.image) held by \(existing?.description ?? "an unreadable lock") (--break-lock)"
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
                .locked, "the image \(target.image) is locked: \(store.name) exists but does not say by whom",
                hint: "if nothing uses the image, run again with --break-lock")
        }
        try await store.remove()
        guard try await store.createExclusive(ours.text) else {
            throw ImgBackupError(
                .locked, "the image \(target.image) was locked by someone else while this machine replaced the lock",
                hint: "wait for it to close, then run again")
        }
    }

    /// Removes the lock if it is still `token`'s. Best effort: after a hang
    /// the remote cannot be reached, and the lock must not keep the rest of
    /// the stack up; the next open from this machine knows it as its own.
    public static func release(_ store: any RemoteLockStore, token: String, logger: Logger) async {
        do {
            guard let text = try await store.read() else { return }
            if text.isEmpty {
                // Created (O_EXCL) but never written: this session was
                // stopped between the two, as its record of the lock says.
                // Left there, it would lock out every later open.
                logger.notice("removing the empty lock \(store.name), left by an interrupted lock")
                return try await store.remove()
            }
            guard text.contains("token=\(token)") else {
                // Also the unwind after failing to take a lock someone else holds.
                logger.info("\(store.name) is not this session's lock: leaving it")
                return
            }
            try await store.remove()
        } catch {
            logger.notice(
                "could not remove the remote lock \(store.name) (\(ImgBackupError.reason(of: error))): the next open from this machine replaces it"
            )
        }
    }
}

/// The lock file beside an image reached over sshfs, as a layer of the stack.
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

    var lock: RemoteLock {
        RemoteLock(
            store: LockFile(path: path, deadline: deadline), target: target, paths: paths, breakLock: breakLock,
            logger: logger, token: token)
    }

    public func up() async throws -> LayerRecord {
        try await lock.take()
        return intent
    }
}

extension RemoteLockLayer {
    static let kind = "lock"

    static func describe(path: String) -> String { "remote lock \(path)" }

    static func down(path: String, token: String, in context: TeardownContext) async {
        await RemoteLock.release(
            LockFile(path: path, deadline: context.stepDeadline), token: token, logger: context.logger)
    }
}

#if canImport(Glibc)
    import Glibc
#endif
