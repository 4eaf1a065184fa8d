import ImgBackupOS
import Synchronization

/// The bytes a target's own connections carry on the wire: the ssh under
/// its sshfs mount, under its NBD bridge, and under a pull's source mounts.
/// Read from the kernel's TCP counters of each ssh socket, so nothing of the
/// traffic passes through imgbackup. The same look sets the target's
/// `bandwidth_limit` on each socket (SO_MAX_PACING_RATE: what it sends).
///
/// A socket's counters only grow, so the largest reading of each is what it
/// carried. A run samples every few seconds (sshfs's `reconnect` replaces
/// its ssh, and the old counters go with it) and once more after its
/// write-out; the teardown's last few kilobytes are not counted.
final class WireTraffic: Sendable {
    private let mountPoints: [String]
    private let limit: UInt64?
    private let seen = Mutex<[UInt64: TCPConnections.Traffic]>([:])

    init(target: Target, paths: RuntimePaths, sources: [SourceHost] = []) {
        mountPoints =
            [paths.remoteMount(target.name), paths.nbdMount(target.name)]
            + sources.map { paths.sourceMount(target.name, $0) }
        limit = target.bandwidthLimit?.bytes
    }

    /// How often a run samples.
    static let interval: Duration = .seconds(2)

    /// sshfs and the bridge name their mount point in their argv; the
    /// connections are their ssh's: the bridge's child, and the process at
    /// the other end of sshfs's socket pair (sshfs starts ssh before it
    /// daemonizes, so ssh is nobody's child by then).
    private var connectionOwners: [pid_t] {
        let owners = mountPoints.flatMap { ProcessTable.processes(withArgument: $0) }
        return Array(Set(ProcessTable.descendants(of: owners) + owners.flatMap(TCPConnections.unixPeers(of:))))
    }

    /// Reads every connection's counters, and caps the ones not capped yet.
    func sample() {
        for pid in connectionOwners {
            let traffic = TCPConnections.traffic(of: pid)
            guard !traffic.isEmpty else { continue }
            let new = seen.withLock { seen in
                var new = false
                for (socket, now) in traffic {
                    let before = seen[socket]
                    new = new || before == nil
                    seen[socket] = TCPConnections.Traffic(
                        sent: max(now.sent, before?.sent ?? 0), received: max(now.received, before?.received ?? 0))
                }
                return new
            }
            if new, let limit { TCPConnections.limitSending(of: pid, bytesPerSecond: limit) }
        }
    }

    /// Everything counted so far.
    var total: TCPConnections.Traffic {
        seen.withLock { seen in
            seen.values.reduce(into: TCPConnections.Traffic()) {
                $0.sent += $1.sent
                $0.received += $1.received
            }
        }
    }

    /// Samples every `interval` until cancelled.
    func sampling() -> Task<Void, Never> {
        Task { [self] in
            repeat { sample() } while (try? await Task.sleep(for: Self.interval)) != nil
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
