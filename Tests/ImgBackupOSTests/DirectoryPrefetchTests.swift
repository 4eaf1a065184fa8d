import Foundation
import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct DirectoryPrefetchTests {
    /// Polls until the walk is done; a walk of a few directories takes milliseconds.
    private func waitUntilFinished(_ prefetch: DirectoryPrefetch) async throws {
        for _ in 0..<500 where !prefetch.finished { try await Task.sleep(for: .milliseconds(10)) }
        #expect(prefetch.finished)
    }

    @Test func readsEveryDirectoryOnceAndFollowsNoSymlink() async throws {
        let scratch = ScratchDirectory()
        let tree = "\(scratch.path)/snapshot"
        let elsewhere = "\(scratch.path)/elsewhere"
        for directory in ["a/b/c", "a/d", "e"] {
            try FileManager.default.createDirectory(atPath: "\(tree)/\(directory)", withIntermediateDirectories: true)
        }
        for directory in ["x/y", "z"] {
            try FileManager.default.createDirectory(
                atPath: "\(elsewhere)/\(directory)", withIntermediateDirectories: true)
        }
        _ = scratch.file("snapshot/a/file", size: 10)
        // Planted links to directories, absolute and relative: never entered.
        #expect(symlink(elsewhere, "\(tree)/absolute") == 0)
        #expect(symlink("../elsewhere", "\(tree)/a/relative") == 0)

        let prefetch = DirectoryPrefetch.start(tree, width: 4)
        try await waitUntilFinished(prefetch)
        // snapshot, a, a/b, a/b/c, a/d, e
        #expect(prefetch.directoriesRead == 6)
        #expect(await prefetch.stop(waitingAtMost: .seconds(1)))
    }

    @Test func entersDirectoriesWhoseNamesAreNotUTF8() async throws {
        let scratch = ScratchDirectory()
        let tree = "\(scratch.path)/snapshot"
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        // "caf\xe9" (Latin-1) and a directory inside it.
        var name = Array("\(tree)/caf".utf8CString.dropLast()) + [CChar(bitPattern: 0xE9), 0]
        #expect(mkdir(&name, 0o755) == 0)
        var inner = Array(name.dropLast()) + Array("/inner".utf8CString)
        #expect(mkdir(&inner, 0o755) == 0)

        let prefetch = DirectoryPrefetch.start(tree, width: 2)
        try await waitUntilFinished(prefetch)
        #expect(prefetch.directoriesRead == 3)
    }

    @Test func aStoppedWalkTakesNoNewDirectory() async throws {
        let scratch = ScratchDirectory()
        let tree = "\(scratch.path)/snapshot"
        for index in 0..<1000 {
            try FileManager.default.createDirectory(
                atPath: "\(tree)/\(index)/inner", withIntermediateDirectories: true)
        }
        let prefetch = DirectoryPrefetch.start(tree, width: 1)
        #expect(await prefetch.stop(waitingAtMost: .seconds(5)))
        let readWhenStopped = prefetch.directoriesRead
        #expect(prefetch.finished)
        try await Task.sleep(for: .milliseconds(100))
        #expect(prefetch.directoriesRead == readWhenStopped)
        #expect(readWhenStopped < 2001)
    }

    @Test func aMissingRootIsAnEmptyWalk() async throws {
        let scratch = ScratchDirectory()
        let prefetch = DirectoryPrefetch.start("\(scratch.path)/nothing-here", width: 2)
        try await waitUntilFinished(prefetch)
        #expect(prefetch.directoriesRead == 1)
    }
}
