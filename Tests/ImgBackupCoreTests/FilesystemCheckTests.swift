import Foundation
import ImgBackupOS
import Logging
import Testing

@testable import ImgBackupCore

/// The dirty marker and the check it calls for, with the real e2fsck on an
/// ext4 filesystem in a plain file (no device-mapper needed).
@Suite(.serialized) struct FilesystemCheckTests {
    let root: String
    let check: FilesystemCheck

    init() {
        root = makeScratchDirectory("fsck")
        let target = Target(
            name: "t", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "t.img", key: .file("/k"),
            mountPoint: root + "/mnt")
        check = FilesystemCheck(
            target: target,
            environment: OperationEnvironment(
                paths: RuntimePaths(runtimeDirectory: root + "/run", stateDirectory: root + "/state"),
                logger: Logger(label: "test")))
    }

    func makeExt4() async throws -> String {
        let image = root + "/fs.img"
        FileManager.default.createFile(atPath: image, contents: nil)
        truncate(image, 32 << 20)
        let made = try await SubprocessCommandRunner().run(
            Command("mkfs.ext4", ["-q", "-F", image], timeout: .seconds(60)))
        #expect(made.succeeded)
        return image
    }

    @Test func noMarkerNoCheck() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        // A device that does not exist: a check would fail, so none may run.
        try await check.checkIfMarked(device: root + "/missing")
        #expect(!check.marker.isSet)
    }

    @Test func aMarkedCleanFilesystemPassesAndTheMarkerStaysUntilClear() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let image = try await makeExt4()
        try check.marker.set(by: .run)
        #expect(check.marker.isSet)
        try await check.checkIfMarked(device: image)
        check.marker.clear()
        #expect(!check.marker.isSet)
    }

    @Test func aDamagedFilesystemIsRefusedWithWhatToDo() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let image = try await makeExt4()
        // Zero the group descriptors (block 1 onwards): beyond what -p may fix.
        let fd = open(image, O_WRONLY)
        let zeros = [UInt8](repeating: 0, count: 64 << 10)
        _ = zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 4096) }
        close(fd)
        try check.marker.set(by: .open)
        let error = await #expect(throws: ImgBackupError.self) { try await check.checkIfMarked(device: image) }
        #expect(error?.code == .system)
        #expect(error?.description.contains("has errors the check did not fix: e2fsck exited with status") == true)
        #expect(error?.description.contains("open --skip-check t") == true)
        #expect(check.marker.isSet, "the marker stays until a clean close")
    }
}

@Suite struct RemoteLockHolderTests {
    @Test func roundTripsAndRejectsWhatIsNotALock() {
        let holder = RemoteLockHolder(
            host: "laptop", pid: 42, target: "offsite", since: "2026-11-22T03:00:00Z", token: "T-1")
        #expect(RemoteLockHolder.parse(holder.text) == holder)
        #expect(holder.description == "target 'offsite' on laptop (pid 42) since 2026-11-22T03:00:00Z")
        #expect(RemoteLockHolder.parse("") == nil)
        #expect(RemoteLockHolder.parse("host=laptop\npid=x\ntoken=t\n") == nil)
    }

    /// A lock the backup host wrote itself, each field as long as a read allows.
    @Test func aPlantedLocksLongFieldsAreClipped() throws {
        let long = String(repeating: "x", count: 20_000)
        let planted = try #require(
            RemoteLockHolder.parse("host=\(long)\npid=7\ntarget=\(long)\nsince=\(long)\ntoken=t\n"))
        #expect(planted.description.count < 300)
        #expect(planted.description.hasPrefix("target 'xxx"))
    }
}
