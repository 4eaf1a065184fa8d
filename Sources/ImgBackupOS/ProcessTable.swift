import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Finds and stops processes by their command line, from /proc.
///
/// Used for crash recovery: when `open` is killed while sshfs is still
/// connecting, that sshfs (in its own process group) lives on and would mount
/// after `close` has looked. `close` finds it by the mount point in its argv.
public enum ProcessTable {
    /// PIDs whose argv[0] ends in `/name` (or is `name`) and whose argv contains `argument`.
    public static func processes(named name: String, withArgument argument: String) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry), pid != getpid(),
                let data = KernelFile.data("/proc/\(entry)/cmdline"), !data.isEmpty
            else { return nil }
            let argv = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard let first = argv.first, first == name || first.hasSuffix("/\(name)") else { return nil }
            return argv.dropFirst().contains(argument) ? pid : nil
        }
    }

    /// PIDs of the processes whose argv contains `argument` (a mount point
    /// in sshfs's or the NBD bridge's command line), whatever their name.
    public static func processes(withArgument argument: String) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry), pid != getpid(),
                let data = KernelFile.data("/proc/\(entry)/cmdline"), !data.isEmpty
            else { return nil }
            return data.split(separator: 0).dropFirst().contains { String(decoding: $0, as: UTF8.self) == argument }
                ? pid : nil
        }
    }

    /// The children of `parents`, their children, and so on (from each
    /// process's parent in /proc/PID/stat).
    public static func descendants(of parents: [pid_t]) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var parentOf: [pid_t: pid_t] = [:]
        for entry in entries {
            guard let pid = pid_t(entry), let stat = KernelFile.text("/proc/\(entry)/stat"),
                let end = stat.lastIndex(of: ")")
            else { continue }
            // "PID (comm) STATE PPID ...": comm may hold spaces and parentheses.
            let fields = stat[stat.index(after: end)...].split(separator: " ")
            if fields.count > 1, let parent = pid_t(fields[1]) { parentOf[pid] = parent }
        }
        var found: [pid_t] = []
        var frontier = Set(parents)
        while !frontier.isEmpty {
            let next = parentOf.filter { frontier.contains($0.value) }.map(\.key)
            found += next
            frontier = Set(next)
        }
        return found
    }

    /// PIDs with their working directory, root, or an open file under `path`
    /// (what `fuser -m` finds). Reads /proc links only: never touches the
    /// filesystem at `path`, so it works when that filesystem hangs.
    public static func processes(using path: String) -> [pid_t] {
        let prefix = path.hasSuffix("/") ? path : path + "/"
        let isUnder = { (link: String) in link == path || link.hasPrefix(prefix) }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry), pid != getpid() else { return nil }
            for name in ["cwd", "root"] {
                if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/\(name)"),
                    isUnder(link)
                {
                    return pid
                }
            }
            let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(entry)/fd")) ?? []
            for descriptor in descriptors {
                if let link = try? FileManager.default.destinationOfSymbolicLink(
                    atPath: "/proc/\(entry)/fd/\(descriptor)"),
                    isUnder(link)
                {
                    return pid
                }
            }
            // A mapped file keeps the mount busy too (a tool's mmap of what it reads).
            if let maps = KernelFile.text("/proc/\(entry)/maps"),
                maps.split(separator: "\n").contains(where: { line in
                    line.firstIndex(of: "/").map { isUnder(String(line[$0...])) } ?? false
                })
            {
                return pid
            }
            return nil
        }
    }

    /// Whether `pid` is a live process: not gone, and not a zombie waiting
    /// to be reaped (its files are closed already).
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        // /proc/PID/stat: "pid (comm) S ...": the state follows the last ')'.
        guard let text = KernelFile.text("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return true }
        let state = text[text.index(after: close)...].drop(while: { $0 == " " }).first
        return state != "Z" && state != "X"
    }

    /// SIGTERM, up to `grace` for them to go, then SIGKILL.
    public static func terminate(_ pids: [pid_t], grace: Duration) async {
        for pid in pids { kill(pid, SIGTERM) }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while clock.now < deadline, pids.contains(where: { isAlive($0) }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for pid in pids where isAlive(pid) { kill(pid, SIGKILL) }
    }

    /// Stops every process that uses `path` and waits until none does:
    /// each one's process group gets SIGTERM, then after `grace` SIGKILL,
    /// and the table is read again (a tool may start children while it
    /// stops). A process killed but still closing its files counts as using
    /// the path until it is gone. Returns what still uses it at `deadline`:
    /// processes stuck in the kernel on a dead transport, which only a
    /// forced unmount gets past.
    public static func stopAll(using path: String, grace: Duration, deadline: Duration) async -> [pid_t] {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: deadline)
        let ownGroup = getpgrp()
        var signalled: [pid_t: ContinuousClock.Instant] = [:]
        while true {
            let users = processes(using: path).filter(isAlive)
            if users.isEmpty || clock.now >= end { return users }
            for pid in users {
                guard let first = signalled[pid] else {
                    signalled[pid] = clock.now
                    signal(pid, SIGTERM, ownGroup: ownGroup)
                    continue
                }
                if clock.now - first >= grace { signal(pid, SIGKILL, ownGroup: ownGroup) }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    /// The process's group when it has one of its own (a tool imgbackup
    /// started), else the process alone: never imgbackup's own group.
    private static func signal(_ pid: pid_t, _ number: Int32, ownGroup: pid_t) {
        let group = getpgid(pid)
        if group > 1, group != ownGroup { kill(-group, number) }
        kill(pid, number)
    }
}
