import Testing

@testable import ImgBackupOS

@Suite struct KeyFileTests {
    @Test func readsEveryByteOfAPrivateFile() throws {
        let scratch = ScratchDirectory()
        let path = scratch.file("key", size: 0, mode: 0o600, contents: Array("secret\n".utf8))
        let key = try KeyFile.read(path: path)
        #expect(key.count == 7)
        key.withUnsafeBytes { #expect(Array($0) == Array("secret\n".utf8)) }
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o620, 0o660])
    func refusesGroupOrOtherAccess(mode: Int) {
        let scratch = ScratchDirectory()
        let path = scratch.file("key", size: 0, mode: mode_t(mode), contents: Array("secret".utf8))
        #expect(throws: KeyFileProblem.loosePermissions(mode: UInt32(mode))) { try KeyFile.read(path: path) }
    }

    @Test func refusesEmptyAndMissingAndDirectories() {
        let scratch = ScratchDirectory()
        let empty = scratch.file("empty", size: 0)
        #expect(throws: KeyFileProblem.empty) { try KeyFile.read(path: empty) }
        #expect(throws: KeyFileProblem.notRegularFile) { try KeyFile.read(path: scratch.path) }
        let error = #expect(throws: KeyFileProblem.self) { try KeyFile.read(path: "\(scratch.path)/missing") }
        if case .unreadable(let cause) = error { #expect(cause.errno == ENOENT) } else { Issue.record("got \(String(describing: error))") }
    }
}

#if canImport(Glibc)
import Glibc
#endif
