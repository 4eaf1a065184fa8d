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
                if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/\(name)"), isUnder(link) {
                    return pid
                }
            }
            let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(entry)/fd")) ?? []
            for descriptor in descriptors {
                if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/fd/\(descriptor)"),
                    isUnder(link)
                {
                    return pid
                }
            }
            return nil
        }
    }

    /// SIGTERM, up to `grace` for them to go, then SIGKILL.
    public static func terminate(_ pids: [pid_t], grace: Duration) async {
        for pid in pids { kill(pid, SIGTERM) }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while clock.now < deadline, pids.contains(where: { kill($0, 0) == 0 }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for pid in pids where kill(pid, 0) == 0 { kill(pid, SIGKILL) }
    }
}
