import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Reads the directories of a tree many at a time, ahead of a program that
/// walks the tree one lookup at a time (rsync comparing against the last
/// snapshot). Over a distant link every directory block not yet in memory
/// costs that program a round trip of its own, one after another; read
/// here first, several at once, the blocks are in the page cache (or on
/// their way) when it asks. Best effort: what cannot be read is skipped,
/// and the program reads it itself.
///
/// Reads directory entries only: no file data, and no inodes. Never
/// follows a symlink (only entries the directory itself types as
/// directories are entered, and they are opened O_NOFOLLOW).
public final class DirectoryPrefetch: @unchecked Sendable {
    // Every field is guarded by `condition`.
    private let condition = NSCondition()
    /// Directories not yet read, each a NUL-terminated path; the last is
    /// read next, so the walk goes depth first in name order, as rsync does.
    private var pending: [[CChar]]
    private var reading = 0
    private var stopped = false
    private var read = 0

    /// Starts `width` threads reading `root` and every directory below it.
    public static func start(_ root: String, width: Int = 16) -> DirectoryPrefetch {
        let prefetch = DirectoryPrefetch(root: root)
        for _ in 0..<max(1, width) {
            Thread { prefetch.work() }.start()
        }
        return prefetch
    }

    private init(root: String) {
        pending = [Array(root.utf8CString)]
    }

    /// Directories read (or tried: one that cannot be opened counts) so far.
    public var directoriesRead: Int {
        condition.lock()
        defer { condition.unlock() }
        return read
    }

    /// Whether every directory has been read (or given up on).
    public var finished: Bool {
        condition.lock()
        defer { condition.unlock() }
        return (pending.isEmpty || stopped) && reading == 0
    }

    /// Takes no new directory; the ones being read finish.
    public func stop() {
        condition.lock()
        defer { condition.unlock() }
        stopped = true
        condition.broadcast()
    }

    /// Stops, and waits at most `deadline` (or until the task is cancelled)
    /// for the directories being read: each holds a descriptor on the
    /// filesystem, which must be closed before it is unmounted. Returns
    /// whether they all were. A remote that stopped answering can hold a
    /// read forever; that is the hang watchdog's business, so this polls
    /// and never blocks a thread of the task pool.
    @discardableResult
    public func stop(waitingAtMost deadline: Duration) async -> Bool {
        stop()
        let clock = ContinuousClock()
        let end = clock.now + deadline
        while !finished {
            guard clock.now < end, (try? await Task.sleep(for: .milliseconds(10))) != nil else { return finished }
        }
        return true
    }

    private func work() {
        condition.lock()
        while true {
            if stopped || (pending.isEmpty && reading == 0) {
                condition.broadcast()
                condition.unlock()
                return
            }
            guard let directory = pending.popLast() else {
                condition.wait()
                continue
            }
            reading += 1
            condition.unlock()
            let children = Self.subdirectories(of: directory)
            condition.lock()
            reading -= 1
            read += 1
            pending.append(contentsOf: children.reversed())
            condition.broadcast()
        }
    }

    /// The directories directly in `directory`, in name order.
    private static func subdirectories(of directory: [CChar]) -> [[CChar]] {
        let fd = directory.withUnsafeBufferPointer {
            open($0.baseAddress!, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
        guard fd >= 0, let stream = fdopendir(fd) else {
            if fd >= 0 { close(fd) }
            return []
        }
        defer { closedir(stream) }
        var names: [[CChar]] = []
        while let entry = readdir(stream) {
            var name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(raw.bindMemory(to: CChar.self).prefix { $0 != 0 })
            }
            if name == [46] || name == [46, 46] { continue }  // "." and ".."
            var type = entry.pointee.d_type
            if type == UInt8(DT_UNKNOWN) {
                var info = stat()
                name.append(0)
                let found = name.withUnsafeBufferPointer {
                    fstatat(dirfd(stream), $0.baseAddress!, &info, AT_SYMLINK_NOFOLLOW)
                }
                name.removeLast()
                if found == 0, info.st_mode & S_IFMT == S_IFDIR { type = UInt8(DT_DIR) }
            }
            if type == UInt8(DT_DIR) { names.append(name) }
        }
        names.sort { $0.lexicographicallyPrecedes($1) { UInt8(bitPattern: $0) < UInt8(bitPattern: $1) } }
        let parent = directory.dropLast()  // its NUL
        return names.map { Array(parent) + [47] + $0 + [0] }  // "/"
    }
}
