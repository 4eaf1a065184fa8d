import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A long-lived helper process (the NBD bridge) that must outlive the command
/// that starts it, as sshfs outlives `open`: spawned in a session of its own,
/// stdin from /dev/null, stdout and stderr appended to a log file.
public struct DetachedProcess: Sendable {
    public let pid: pid_t

    public static func spawn(
        executable: String, arguments: [String], environment: [String: String], logFile: String
    ) throws(SystemCallError) -> DetachedProcess {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logFile, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26): its own session, away from the
        // terminal and process group of the command that started it.
        posix_spawnattr_setflags(&attributes, Int16(0x80))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else { throw SystemCallError(call: "posix_spawn", object: executable, errno: status) }
        return DetachedProcess(pid: pid)
    }

    /// The exit status if the process has ended (and reaps it), nil while it runs.
    public func exitStatusIfEnded() -> Int32? {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        guard result == pid else { return nil }
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Whether `pid` is alive and its command line contains `argument`
    /// (guards against a reused pid after a crash).
    public static func isRunning(pid: pid_t, withArgument argument: String) -> Bool {
        guard kill(pid, 0) == 0, let data = KernelFile.data("/proc/\(pid)/cmdline") else {
            return false
        }
        return data.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == argument }
    }

    /// The path of the running executable, for starting helpers from it.
    public static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}
