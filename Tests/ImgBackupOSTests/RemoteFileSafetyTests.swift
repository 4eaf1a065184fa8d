import Foundation
import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// What the remote (or a local user) can plant where imgbackup opens or
/// writes a file: a symlink, a FIFO, a file on another filesystem; and the
/// numbers a server reports. End to end over sshfs: e2e/test_hostile_host.py.
@Suite struct RemoteFileSafetyTests {
    @Test func aSymlinkFIFOOrDirectoryInTheImagesPlaceIsNeverOpened() throws {
        let scratch = ScratchDirectory()
        let victim = scratch.file("victim", size: 4096)
        symlink(victim, "\(scratch.path)/link.img")
        mkfifo("\(scratch.path)/fifo.img", 0o600)
        mkdir("\(scratch.path)/dir.img", 0o700)
        for (name, errno) in [("link.img", ELOOP), ("fifo.img", EINVAL), ("dir.img", EINVAL)] {
            let error = #expect(throws: SystemCallError.self) {
                let fd = try MountedRemoteFiles.openRegularFile("\(scratch.path)/\(name)", flags: O_RDONLY | O_NONBLOCK)
                close(fd)
            }
            #expect(error?.errno == errno, "\(name): \(String(describing: error))")
        }
        let fd = try MountedRemoteFiles.openRegularFile(scratch.file("image", size: 4096), flags: O_RDWR)
        close(fd)
    }

    /// /dev/shm is its own filesystem: a file reached through a bind or a
    /// link that left the directory's mount is refused.
    @Test func aFileOnAnotherFilesystemThanItsDirectoryIsRefused() throws {
        let scratch = ScratchDirectory()
        let elsewhere = "/dev/shm/imgbackup-test-\(getpid())"
        #expect(FileManager.default.createFile(atPath: elsewhere, contents: Data("x".utf8)))
        defer { unlink(elsewhere) }
        let bound = scratch.file("bound.img", size: 0)
        guard mount(elsewhere, bound, nil, UInt(MS_BIND), nil) == 0 else {
            Issue.record("bind mount failed (needs root): \(String(cString: strerror(errno)))")
            return
        }
        defer { umount(bound) }
        let error = #expect(throws: SystemCallError.self) {
            close(try MountedRemoteFiles.openRegularFile(bound, flags: O_RDONLY))
        }
        #expect(error?.errno == EXDEV)
    }

    @Test func growingSizingOrReadingThroughASymlinkIsRefused() async throws {
        let scratch = ScratchDirectory()
        let victim = scratch.file("victim", size: 4096)
        symlink(victim, "\(scratch.path)/image.img")
        await #expect(throws: SystemCallError.self) {
            try await MountedRemoteFiles.grow("\(scratch.path)/image.img", to: 1 << 30, deadline: .seconds(5))
        }
        await #expect(throws: SystemCallError.self) {
            _ = try await MountedRemoteFiles.size("\(scratch.path)/image.img", deadline: .seconds(5))
        }
        #expect(try FileManager.default.attributesOfItem(atPath: victim)[.size] as? Int == 4096)
        // The lock file is read the same way: a link in its place is an error, not someone's lock.
        await #expect(throws: SystemCallError.self) {
            _ = try await MountedRemoteFiles.read("\(scratch.path)/image.img", deadline: .seconds(5))
        }
    }

    /// A symlink planted at the destination (say in a metrics collector's
    /// directory) is replaced, never written through; no temporary file is left.
    @Test func writeAtomicallyNeverWritesThroughAPlantedLink() throws {
        let scratch = ScratchDirectory()
        let victim = scratch.file("victim", size: 0, contents: Array("keep me\n".utf8))
        let path = "\(scratch.path)/imgbackup.prom"
        symlink(victim, path)
        symlink(victim, path + ".tmp")
        try LocalFiles.writeAtomically(path, "metrics\n", mode: 0o644)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me\n")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "metrics\n")
        var info = stat()
        #expect(lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG && (info.st_mode & 0o777) == 0o644)
        let left = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.contains(".tmp-") }
        #expect(left.isEmpty)
    }

    @Test(arguments: [
        (UInt64(4096), UInt64(1024), UInt64(4_194_304)),
        (UInt64.max, UInt64(4096), UInt64.max),
        (UInt64(1) << 40, UInt64(1) << 40, UInt64.max),
        (UInt64(0), UInt64.max, UInt64(0)),
    ])
    func productsOfRemoteNumbersSaturate(a: UInt64, b: UInt64, expected: UInt64) {
        #expect(saturatingProduct(a, b) == expected)
    }
}
