import Foundation
import Testing

@testable import ImgBackupOS

@Suite struct FileLockHolderTests {
    @Test func theHolderOfALockFileIsThisProcess() throws {
        let scratch = ScratchDirectory()
        let path = scratch.file("target.lock", size: 0)
        #expect(FileLock.holder(of: path) == nil)
        let lock = try #require(try FileLock.tryAcquire(path: path))
        #expect(FileLock.holder(of: path) == getpid())
        withExtendedLifetime(lock) {}
    }

    @Test func procLocksLinesAreMatchedByInode() {
        let text = """
            1: POSIX  ADVISORY  WRITE 77 00:1a:5678 0 EOF
            2: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF
            2: -> FLOCK  ADVISORY  WRITE 999 00:1a:5678 0 EOF
            3: FLOCK  ADVISORY  WRITE 42 fd:00:91 0 EOF
            """
        #expect(FileLock.holder(inode: 5678, inLocks: text) == 1234)
        #expect(FileLock.holder(inode: 91, inLocks: text) == 42)
        #expect(FileLock.holder(inode: 1, inLocks: text) == nil)
    }
}
