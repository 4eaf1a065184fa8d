import CImgBackupShim
import ImgBackupCore
import ImgBackupOS
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The NBD bridge process itself (`imgbackup nbd-bridge`): connects to the
/// export, then serves it as a one-file FUSE filesystem until unmounted.
public struct BridgeService: Sendable {
    public let target: Target
    public let mountPoint: String
    public let requireTrim: Bool
    public let threads: UInt32
    public let logger: Logger
    /// S3: serve read-only and take no lock (only refuse a held one).
    public var readOnly = false
    /// S3: take the lock from whoever holds it.
    public var breakLock = false
    /// S3, for `init`: the new image's size (there is no metadata yet).
    public var createSize: UInt64?
    public var paths = RuntimePaths()

    public init(target: Target, mountPoint: String, requireTrim: Bool, threads: UInt32 = 16, logger: Logger) {
        self.threads = max(1, threads)
        self.target = target
        self.mountPoint = mountPoint
        self.requireTrim = requireTrim
        self.logger = logger
    }

    public func run() async throws(ImgBackupError) {
        guard target.transport == .s3 else {
            return try await serve(try NBDEndpointBuilder.endpoint(for: target), s3: nil)
        }
        let (session, endpoint) = try await S3BridgeSession.prepare(
            target: target, paths: paths, readOnly: readOnly, breakLock: breakLock, createSize: createSize,
            logger: logger)
        do {
            try await serve(endpoint, s3: session)
        } catch {
            await session.finish()
            throw error
        }
        await session.finish()
    }

    private func serve(_ endpoint: NBDEndpoint, s3: S3BridgeSession?) async throws(ImgBackupError) {
        let connection = try await Self.connect(endpoint, target: target)
        s3?.connected()
        guard connection.size > 0 else {
            throw ImgBackupError(.remote, "failed to use the NBD export of \(target.name): it reports no size")
        }
        if requireTrim && !connection.canTrim {
            throw ImgBackupError(
                .remote, "the NBD server for \(target.name) cannot trim",
                hint: "nbd-server needs 'trim = true'; nbdkit's file plugin trims")
        }
        // The bridge serves the block device that memory reclaim may be
        // writing to: it must not wait on its own writeback (PR_SET_IO_FLUSHER)
        // nor be paged out (locked memory). Both are best effort.
        if imgb_set_io_flusher() != 0 { logger.info("PR_SET_IO_FLUSHER not available: continuing") }
        // MCL_ONFAULT (4, Linux 4.4): lock pages as they are touched rather than
        // populating every new mapping up front, which cost ~20% of write
        // throughput (docs/benchmarks.md).
        if mlockall(MCL_CURRENT | MCL_FUTURE | 4) != 0 { logger.info("mlockall failed: continuing unlocked") }

        let connections = [connection] + (await extraConnections(endpoint, first: connection))
        let export: NBDExport
        do {
            export = try NBDExport(connections: connections)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "start the NBD event loops")
        }
        var storePing: (@Sendable () -> Int32)?
        if let s3 { storePing = { s3.pingStore() } }
        let filesystem = ImageFileSystem(
            export: export, size: UInt64(connection.size), canTrim: connection.canTrim, canZero: connection.canZero,
            canFlush: connection.canFlush, storePing: storePing)
        do {
            let (mountPoint, name, threads) = (mountPoint, target.name, threads)
            try await onThreadOfItsOwn(named: "fuse-session") { () throws(SystemCallError) in
                try filesystem.serve(mountPoint: mountPoint, name: name, threads: threads)
            }
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "serve the NBD export at \(mountPoint)")
        }
        if connection.canFlush { _ = export.flush() }
        for connection in connections { connection.shutdown() }
    }

    /// For `doctor`: connects to `target`'s export as the bridge would, then leaves.
    public static func look(at target: Target, deadline: Duration) async -> NBDLook {
        do {
            let endpoint = try NBDEndpointBuilder.endpoint(for: target)
            let connection = try await connect(endpoint, target: target, deadline: deadline)
            defer { connection.shutdown() }
            return .connected(size: UInt64(max(0, connection.size)), canTrim: connection.canTrim)
        } catch {
            // libnbd's own words: the finding already says what failed.
            return .failed(error.cause.map(ImgBackupError.reason(of:)) ?? error.message)
        }
    }

    /// Connections opened beside the first when the server allows multi-conn.
    /// nbdfuse uses four; more buy little with sixteen FUSE workers.
    static let multiConnections = 4

    /// One connection to `target`'s export, negotiated (`doctor` connects
    /// this way too). Connecting runs ssh and negotiates: a dead server must
    /// not hang us.
    static func connect(
        _ endpoint: NBDEndpoint, target: Target, deadline: Duration = .seconds(60)
    ) async throws(ImgBackupError) -> NBDConnection {
        do {
            let connection = try NBDConnection(name: "imgbackup-\(target.name)")
            try await withAbandonableDeadline(deadline, operation: "connect to the NBD export") {
                try connection.connect(endpoint)
            }
            return connection
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "connect to the NBD export of \(target.name)")
        }
    }

    /// More connections to a URI export whose server advertises multi-conn.
    /// Not for a command endpoint: each connection would be another ssh login
    /// and another single-connection server process on the remote, and
    /// multi-conn is a promise about connections to one server. A connection
    /// that fails here only costs parallelism: the bridge goes on with fewer.
    private func extraConnections(_ endpoint: NBDEndpoint, first: NBDConnection) async -> [NBDConnection] {
        guard case .uri = endpoint, first.canMultiConn, threads > 1 else { return [] }
        let extra = await withTaskGroup(of: NBDConnection?.self) { group in
            for _ in 1..<Self.multiConnections {
                group.addTask { try? await Self.connect(endpoint, target: target) }
            }
            var opened: [NBDConnection] = []
            for await connection in group {
                if let connection, connection.size == first.size { opened.append(connection) }
            }
            return opened
        }
        if extra.count < Self.multiConnections - 1 {
            logger.info(
                "only \(extra.count + 1) of \(Self.multiConnections) NBD connections opened: continuing with those")
        }
        return extra
    }
}
