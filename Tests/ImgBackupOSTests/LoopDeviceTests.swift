import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// Real loop devices: the host kernel has them (it lacks device-mapper only).
@Suite(.enabled(if: isRoot && hasLoopControl, "requires root and /dev/loop-control"))
struct LoopDeviceTests {
    @Test func attachesWithDirectIOAndAutoclearsWhenReleased() async throws {
        let scratch = ScratchDirectory()
        let backing = scratch.file("image", size: 16 << 20)
        var device: LoopDevice? = try LoopDevice.attach(backingFile: backing)
        let path = try #require(device?.path)
        #expect(LoopDevice.devices(backingFile: backing) == [path])
        #expect(device?.directIO == true, "direct I/O was asked for on a disk-backed file")
        // The kernel's own count of 512-byte sectors.
        #expect(
            KernelFile.text("/sys/block/\(path.dropFirst(5))/size")?.trimmingCharacters(in: .whitespacesAndNewlines)
                == "32768")
        #expect(BlockDeviceStats.kernelName(of: path) == String(path.dropFirst(5)))
        #expect(BlockDeviceStats.read(devicePath: path) != nil)
        #expect(LoopDevice.holders(of: path).isEmpty)

        device = nil  // the last user lets go: autoclear detaches it
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(5))
        while !LoopDevice.devices(backingFile: backing).isEmpty && clock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(LoopDevice.devices(backingFile: backing).isEmpty)
    }

    @Test func detachIsIdempotent() throws {
        let scratch = ScratchDirectory()
        let backing = scratch.file("image", size: 16 << 20)
        let device = try LoopDevice.attach(backingFile: backing)
        try LoopDevice.detach(device.path)
        try LoopDevice.detach(device.path)
        try LoopDevice.detach("/dev/loop-does-not-exist")
    }

    @Test func attachingAMissingFileNamesTheFile() {
        let error = #expect(throws: SystemCallError.self) { try LoopDevice.attach(backingFile: "/nonexistent/image") }
        #expect(error?.description == "open on /nonexistent/image: No such file or directory")
    }
}
