import Foundation
import ImgBackupCore
import ImgBackupOS
import Logging
import Synchronization

/// The bridge's side of an S3 target: it holds the image's lock object for
/// as long as it serves (so the lock goes when the session does, and a
/// bridge killed outright leaves one this machine recognises as its own),
/// and runs nbdkit's S3 plugin as its NBD command.
struct S3BridgeSession: Sendable {
    let target: Target
    let location: S3Location
    let client: S3Client
    let files: NBDKitS3.Files
    let lock: RemoteLock
    let readOnly: Bool
    let logger: Logger

    /// Reads the metadata (or, for `init`, checks there is none and takes
    /// `createSize`), takes the lock (a read-only session only checks it),
    /// and writes what nbdkit reads; returns the endpoint to connect to.
    static func prepare(
        target: Target, paths: RuntimePaths, readOnly: Bool, breakLock: Bool, createSize: UInt64?, logger: Logger
    ) async throws(ImgBackupError) -> (S3BridgeSession, NBDEndpoint) {
        guard let location = target.s3 else {
            throw ImgBackupError(.config, "target '\(target.name)' has no [target.\(target.name).s3] table")
        }
        guard let plugin = NBDKitS3.pluginPath() else {
            throw ImgBackupError(
                .system, "the s3 transport needs nbdkit's S3 plugin, which is not installed",
                hint: "apt-get install nbdkit-plugin-python python3-boto3")
        }
        let runner = SubprocessCommandRunner()
        let credentials = try await S3Credentials.load(location, runner: runner)
        let client = S3Client(
            location: location, credentials: credentials, runner: runner, deadline: target.timeouts.stall)
        let metadata: S3ImageMetadata
        if let createSize {
            metadata = S3ImageMetadata(
                size: createSize, objectSize: (location.objectSize ?? S3Location.defaultObjectSize).bytes)
        } else {
            metadata = try await client.requireMetadata()
            if let configured = location.objectSize, configured.bytes != metadata.objectSize {
                logger.notice(
                    "\(location.description) was made with object_size \(ByteSize(bytes: metadata.objectSize)); using that, not the \(configured) in the config"
                )
            }
        }
        let lock = RemoteLock(
            store: S3LockObject(client: client), target: target, paths: paths, breakLock: breakLock, logger: logger)
        if readOnly {
            try await lock.requireUnheldForReading()
        } else {
            do {
                try await lock.take()
            } catch {
                throw ImgBackupError.wrapping(error, .remote, failedTo: "lock \(location.description)")
            }
        }
        let files = NBDKitS3.Files(directory: paths.s3Directory(target.name))
        let session = S3BridgeSession(
            target: target, location: location, client: client, files: files, lock: lock, readOnly: readOnly,
            logger: logger)
        do {
            try files.write(location: location, key: credentials, plugin: plugin)
        } catch {
            await session.finish()
            throw ImgBackupError.wrapping(error, .system, failedTo: "write nbdkit's S3 configuration")
        }
        for (name, value) in files.environment { setenv(name, value, 1) }
        let command: [String]
        do {
            command = try NBDKitS3.command(location: location, metadata: metadata, files: files, readOnly: readOnly)
        } catch {
            await session.finish()
            throw error
        }
        return (session, .command(command))
    }

    /// Whether the store answers: the lock object read back (one GET). For
    /// the hang watchdog's ping, on a FUSE worker thread, which it blocks
    /// until curl answers or gives up (the watchdog stops waiting sooner).
    func pingStore() -> Int32 {
        let answer = Mutex<Int32>(EIO)
        let done = DispatchSemaphore(value: 0)
        let (client, key) = (client, location.lockKey)
        Task {
            let found = try? await client.get(key)
            answer.withLock { $0 = found == nil ? EIO : 0 }
            done.signal()
        }
        done.wait()
        return answer.withLock { $0 }
    }

    /// nbdkit has read the credentials: they go from disk.
    func connected() { files.removeCredentials() }

    /// After serving (or failing to): no credentials left behind, and the
    /// lock released if it is still ours.
    func finish() async {
        files.removeCredentials()
        if !readOnly { await RemoteLock.release(lock.store, token: lock.token, logger: logger) }
    }
}
