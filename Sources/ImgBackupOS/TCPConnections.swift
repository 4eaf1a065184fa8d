import CImgBackupShim
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The TCP connections of other processes (the ssh under sshfs or the NBD
/// bridge): what each has carried, and a cap on what it sends. Each socket
/// is borrowed for a moment (pidfd_getfd), so no byte of the traffic passes
/// through imgbackup, and a cap set on the borrowed copy holds on the
/// process's own socket.
public enum TCPConnections {
    public struct Traffic: Sendable, Equatable {
        public var sent: UInt64
        public var received: UInt64
        public init(sent: UInt64 = 0, received: UInt64 = 0) {
            self.sent = sent
            self.received = received
        }
    }

    /// Each TCP socket `pid` holds, by socket inode, with its traffic so far.
    /// Empty when the process is gone or cannot be looked into.
    public static func traffic(of pid: pid_t) -> [UInt64: Traffic] {
        var found: [UInt64: Traffic] = [:]
        forEachSocket(of: pid) { inode, fd in
            var sent: UInt64 = 0
            var received: UInt64 = 0
            if imgb_tcp_traffic(fd, &sent, &received) == 0 { found[inode] = Traffic(sent: sent, received: received) }
        }
        return found
    }

    /// Caps what every TCP socket of `pid` sends at `bytesPerSecond`;
    /// returns how many sockets were capped.
    @discardableResult
    public static func limitSending(of pid: pid_t, bytesPerSecond: UInt64) -> Int {
        var capped = 0
        forEachSocket(of: pid) { _, fd in
            var sent: UInt64 = 0
            var received: UInt64 = 0
            // TCP only (ssh also holds a unix socket to its agent, perhaps).
            guard imgb_tcp_traffic(fd, &sent, &received) == 0 else { return }
            if imgb_set_max_pacing_rate(fd, bytesPerSecond) == 0 { capped += 1 }
        }
        return capped
    }

    /// The processes at the other end of `pid`'s unix sockets (sshfs's ssh,
    /// which sshfs started before it daemonized, so it is not its child).
    public static func unixPeers(of pid: pid_t) -> [pid_t] {
        let peers = Set(
            socketInodes(of: pid).compactMap { inode -> UInt64? in
                guard inode <= UInt64(UInt32.max) else { return nil }
                let peer = imgb_unix_peer(UInt32(inode))
                return peer > 0 ? UInt64(peer) : nil
            })
        guard !peers.isEmpty else { return [] }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let other = pid_t(entry), other != pid else { return nil }
            return socketInodes(of: other).contains(where: peers.contains) ? other : nil
        }
    }

    private static func socketInodes(of pid: pid_t) -> [UInt64] {
        let directory = "/proc/\(pid)/fd"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return entries.compactMap { entry in
            guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)"),
                link.hasPrefix("socket:["), link.hasSuffix("]")
            else { return nil }
            return UInt64(link.dropFirst("socket:[".count).dropLast())
        }
    }

    /// Calls `body` with each socket's inode and a borrowed descriptor of it
    /// (closed afterwards).
    private static func forEachSocket(of pid: pid_t, _ body: (UInt64, Int32) -> Void) {
        let directory = "/proc/\(pid)/fd"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for entry in entries {
            guard let number = Int32(entry),
                let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(directory)/\(entry)"),
                link.hasPrefix("socket:["), link.hasSuffix("]"),
                let inode = UInt64(link.dropFirst("socket:[".count).dropLast())
            else { continue }
            let fd = imgb_borrow_fd(pid, number)
            guard fd >= 0 else { continue }
            body(inode, fd)
            close(fd)
        }
    }
}
