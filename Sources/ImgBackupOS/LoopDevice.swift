import CImgBackupShim
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A loop device imgbackup attached to an image file.
///
/// It is attached with autoclear, so the kernel detaches it when its last
/// user (dm-crypt, or the open descriptor held here) lets go: a crash between
/// attaching and activating cannot leak it. Keep the instance alive until
/// dm-crypt has opened the device.
public final class LoopDevice: Sendable {
    /// `/dev/loopN`.
    public let path: String
    public let number: Int
    private let descriptor: Int32

    private init(path: String, number: Int, descriptor: Int32) {
        self.path = path
        self.number = number
        self.descriptor = descriptor
    }

    deinit { close(descriptor) }

    /// Attaches a free loop device to `backingFile` with LOOP_CONFIGURE.
    ///
    /// Direct I/O is asked for: a buffered loop device on a FUSE file is up to
    /// 14x slower (measured; docs/benchmarks.md). The kernel silently falls
    /// back to buffered I/O where the file cannot do direct I/O; see ``directIO``.
    /// `readOnly`: the file is opened read-only and the device refuses
    /// every write, whoever asks (the kernel included).
    public static func attach(backingFile: String, directIO: Bool = true, readOnly: Bool = false)
        throws(SystemCallError) -> LoopDevice
    {
        let backing = try MountedRemoteFiles.openRegularFile(backingFile, flags: readOnly ? O_RDONLY : O_RDWR)
        defer { close(backing) }
        let control = try checked("open", "/dev/loop-control") { open("/dev/loop-control", O_RDWR | O_CLOEXEC) }
        defer { close(control) }
        // Another process can take the free device between GET_FREE and
        // CONFIGURE (EBUSY): ask again.
        var attempts = 0
        while true {
            attempts += 1
            let number = try checkedNegative("ioctl(LOOP_CTL_GET_FREE)", "/dev/loop-control") {
                imgb_loop_ctl_get_free(control)
            }
            let path = "/dev/loop\(number)"
            let device = try openWaitingForNode(path)
            let status = imgb_loop_configure(device, backing, readOnly ? 1 : 0, directIO ? 1 : 0, 1, backingFile)
            if status == 0 {
                return LoopDevice(path: path, number: Int(number), descriptor: device)
            }
            close(device)
            if -status == EBUSY && attempts < 10 { continue }
            throw SystemCallError(call: "ioctl(LOOP_CONFIGURE)", object: path, errno: -status)
        }
    }

    /// The device node can appear a moment after LOOP_CTL_GET_FREE created it.
    private static func openWaitingForNode(_ path: String) throws(SystemCallError) -> Int32 {
        for _ in 0..<50 {
            let fd = open(path, O_RDWR | O_CLOEXEC)
            if fd >= 0 { return fd }
            if errno != ENOENT { throw SystemCallError(call: "open", object: path, errno: errno) }
            usleep(20_000)
        }
        throw SystemCallError(call: "open", object: path, errno: ENOENT)
    }

    /// Whether the kernel really does direct I/O for this device.
    public var directIO: Bool { Self.sysfsValue(number, "dio") == "1" }

    // MARK: Finding and detaching by backing file

    /// Loop devices whose backing file is `backingFile`. Reads sysfs only, so
    /// it never blocks on a hung backing filesystem.
    public static func devices(backingFile: String) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return entries.filter { $0.hasPrefix("loop") }.sorted().compactMap { name in
            guard let number = Int(name.dropFirst(4)),
                let backing = sysfsValue(number, "backing_file")
            else { return nil }
            // The kernel appends " (deleted)" when the file was unlinked.
            return backing == backingFile || backing == backingFile + " (deleted)" ? "/dev/\(name)" : nil
        }
    }

    /// Detaches `device`. Already detached counts as success; while in use the
    /// kernel defers the detach until the last user closes it.
    public static func detach(_ device: String) throws(SystemCallError) {
        let fd = open(device, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT || errno == ENXIO { return }
            throw SystemCallError(call: "open", object: device, errno: errno)
        }
        defer { close(fd) }
        let status = imgb_loop_clear(fd)
        if status == 0 || -status == ENXIO { return }
        throw SystemCallError(call: "ioctl(LOOP_CLR_FD)", object: device, errno: -status)
    }

    /// Makes the loop device `device` take the current size of its backing
    /// file (after the file grew).
    public static func refreshCapacity(_ device: String) throws(SystemCallError) {
        let fd = open(device, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open", object: device, errno: errno) }
        defer { close(fd) }
        let status = imgb_loop_set_capacity(fd)
        if status != 0 { throw SystemCallError(call: "ioctl(LOOP_SET_CAPACITY)", object: device, errno: -status) }
    }

    private static func sysfsValue(_ number: Int, _ attribute: String) -> String? {
        guard let text = KernelFile.text("/sys/block/loop\(number)/loop/\(attribute)") else { return nil }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

extension LoopDevice {
    /// Kernel names of the devices stacked on `device` (dm-3 for a dm-crypt
    /// mapping), from /sys/block/loopN/holders.
    public static func holders(of device: String) -> [String] {
        let name = device.split(separator: "/").last.map(String.init) ?? device
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/block/\(name)/holders")) ?? []).sorted()
    }
}
