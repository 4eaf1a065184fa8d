import ImgBackupOS

/// A transport the watchdog can ask whether it still answers: the real one
/// is ``TransportProbe``; host tests give ones that answer as they are told.
protocol TransportProbing: Sendable {
    /// Which layer the probe speaks for, in messages.
    var layerName: String { get }
    /// The FUSE mount to ask, and to abort when it hangs.
    var fuseMount: String { get }
    /// Whether bytes reaching the image count as this transport's progress:
    /// they do for the image's transport; a source host's mount shows
    /// progress only as the copy tool's output (write-back of what was
    /// already read keeps the image busy for a while after a source froze).
    var imageWritesAreProgress: Bool { get }
    func answers(within deadline: Duration) async -> Bool
    /// What the remote has sent on this transport's connections so far, by
    /// connection (socket inode); nil where that proves nothing.
    func bytesTheRemoteSent(within deadline: Duration) async -> [UInt64: UInt64]?
}

extension TransportProbing {
    var isSource: Bool { !imageWritesAreProgress }
    func bytesTheRemoteSent(within deadline: Duration) async -> [UInt64: UInt64]? { nil }
}

/// Asks a transport a question only the remote can answer, with a short
/// deadline of its own: on an sshfs mount, the attributes of a name that
/// was never asked about (an SFTP LSTAT every server has; nothing caches
/// the answer to a name nobody asked for before); through the NBD bridge, a
/// one-sector read (getxattr `user.imgbackup.ping`). A keepalive is no such
/// question: sshd answers those while a frozen sftp-server answers nothing.
/// Nor is statfs: without the `statvfs@openssh.com` extension (SFTP-only
/// hosts that lack it) sshfs answers it itself, with made-up numbers.
struct TransportProbe: TransportProbing, Equatable {
    enum Kind: Sendable, Equatable { case sshfs, nbd }
    let kind: Kind
    /// Which layer the probe speaks for, in messages.
    let layerName: String
    /// The FUSE mount to ask, and to abort when it hangs.
    let fuseMount: String
    /// Whether bytes reaching the image count as this transport's progress:
    /// they do for the image's transport; a source host's mount shows
    /// progress only as the copy tool's output (write-back of what was
    /// already read keeps the image busy for a while after a source froze).
    let imageWritesAreProgress: Bool
    /// Whether bytes the remote sends are its answers. An S3 store sends
    /// only answers (nbdkit's HTTP requests), so bytes arriving prove it
    /// works even while the ping waits: nbdkit's cache filter holds every
    /// request while a flush sends what it gathered, which over a slow
    /// uplink takes longer than the stall. Not over ssh: sshd answers
    /// keepalives while the sftp-server or nbdkit behind it is frozen.
    let remoteSendsOnlyAnswers: Bool

    /// The image's transport.
    init(target: Target, paths: RuntimePaths) {
        switch target.transport {
        case .sshfs:
            (kind, layerName, fuseMount) = (.sshfs, "sshfs to \(target.remote.host)", paths.remoteMount(target.name))
        case .nbd:
            (kind, layerName, fuseMount) = (.nbd, "the NBD export of \(target.name)", paths.nbdMount(target.name))
        case .s3:
            // The bridge's ping reads one sector: nbdkit asks the store.
            (kind, layerName, fuseMount) = (
                .nbd, "the S3 store at \(target.s3?.endpoint ?? target.remote.host)", paths.nbdMount(target.name)
            )
        }
        imageWritesAreProgress = true
        remoteSendsOnlyAnswers = target.transport == .s3
    }

    /// A source host's read-only mount.
    init(source: SourceHost, target: Target, paths: RuntimePaths) {
        kind = .sshfs
        layerName = "the source host \(source.host)"
        fuseMount = paths.sourceMount(target.name, source)
        imageWritesAreProgress = false
        remoteSendsOnlyAnswers = false
    }

    func answers(within deadline: Duration) async -> Bool {
        let kind = kind
        let mount = fuseMount
        do {
            return try await withAbandonableDeadline(deadline, operation: "probe \(layerName)") {
                switch kind {
                case .sshfs: return MountedRemoteFiles.answersLookup(in: mount)
                case .nbd:
                    return ExtendedAttribute.value(
                        of: "\(mount)/\(BridgedImage.fileName)", name: BridgedImage.pingAttribute) != nil
                }
            }
        } catch {
            return false
        }
    }

    /// Through the NBD bridge to an S3 store: what the store sent to the
    /// bridge's nbdkit, from the kernel's counters of its sockets.
    func bytesTheRemoteSent(within deadline: Duration) async -> [UInt64: UInt64]? {
        guard remoteSendsOnlyAnswers else { return nil }
        let mount = fuseMount
        // /proc reads: bounded too, as everything that looks at processes
        // working on a remote that may have stopped.
        return try? await withAbandonableDeadline(deadline, operation: "count what \(layerName) sent") {
            let bridge = ProcessTable.processes(withArgument: mount)
            var sent: [UInt64: UInt64] = [:]
            for pid in bridge + ProcessTable.descendants(of: bridge) {
                for (socket, traffic) in TCPConnections.traffic(of: pid) { sent[socket] = traffic.received }
            }
            return sent
        }
    }
}

extension TransportProbe {
    /// The transports a step works through: the image's, and each source
    /// host's mount when pulling.
    static func all(target: Target, sources: [SourceHost], paths: RuntimePaths) -> [any TransportProbing] {
        [TransportProbe(target: target, paths: paths)]
            + sources.map { TransportProbe(source: $0, target: target, paths: paths) }
    }
}
