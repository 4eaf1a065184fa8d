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
        if case .unreadable(let cause) = error {
            #expect(cause.errno == ENOENT)
        } else {
            Issue.record("got \(String(describing: error))")
        }
    }

    /// A FIFO at key_file would block a run forever; a symlink could lead anywhere.
    @Test func refusesAFIFOAndASymlinkWithoutBlocking() {
        let scratch = ScratchDirectory()
        let fifo = "\(scratch.path)/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(throws: KeyFileProblem.notRegularFile) { try KeyFile.read(path: fifo) }
        let key = scratch.file("key", size: 0, mode: 0o600, contents: Array("secret".utf8))
        #expect(symlink(key, "\(scratch.path)/link") == 0)
        #expect(throws: KeyFileProblem.notRegularFile) { try KeyFile.read(path: "\(scratch.path)/link") }
    }

    @Test(.enabled(if: geteuid() == 0, "chown needs root"))
    func refusesAKeyOwnedByAnotherUser() {
        let scratch = ScratchDirectory()
        let key = scratch.file("key", size: 0, mode: 0o600, contents: Array("secret".utf8))
        #expect(chown(key, 64_000, 64_000) == 0)
        #expect(throws: KeyFileProblem.foreignOwner(uid: 64_000)) { try KeyFile.read(path: key) }
    }

    /// Others who may write the directory could swap the key for their own; a
    /// sticky directory (like /tmp) keeps them from replacing our file.
    @Test func refusesAKeyInADirectoryOthersMayWrite() {
        let scratch = ScratchDirectory()
        let key = scratch.file("key", size: 0, mode: 0o600, contents: Array("secret".utf8))
        #expect(chmod(scratch.path, 0o777) == 0)
        #expect(throws: KeyFileProblem.looseDirectory(path: scratch.path, mode: 0o777)) { try KeyFile.read(path: key) }
        #expect(chmod(scratch.path, 0o1777) == 0)
        #expect(throws: Never.self) { _ = try KeyFile.read(path: key) }
    }
}

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct KeyStreamTests {
    /// A pipe holding `bytes`, its write end closed: what `--key-fd` reads.
    private func pipe(holding bytes: [UInt8]) -> Int32 {
        var ends: [Int32] = [-1, -1]
        #expect(Glibc.pipe(&ends) == 0)
        bytes.withUnsafeBytes { _ = Glibc.write(ends[1], $0.baseAddress, $0.count) }
        close(ends[1])
        return ends[0]
    }

    @Test func readsADescriptorToTheEndEveryByteIncluded() throws {
        let fd = pipe(holding: Array("passphrase\n".utf8))
        defer { close(fd) }
        let key = try KeyFile.read(descriptor: fd, name: "the key on descriptor \(fd)")
        key.withUnsafeBytes { #expect(Array($0) == Array("passphrase\n".utf8)) }
    }

    @Test func refusesAnEmptyStream() {
        let fd = pipe(holding: [])
        defer { close(fd) }
        #expect(throws: KeyFileProblem.empty) { try KeyFile.read(descriptor: fd, name: "stdin") }
    }

    @Test func refusesMoreThanTheStreamLimit() throws {
        let scratch = ScratchDirectory()
        let path = scratch.file(
            "big", size: 0, mode: 0o600, contents: [UInt8](repeating: 7, count: KeyFile.streamLimit + 1))
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        #expect(throws: KeyFileProblem.tooLarge(limit: KeyFile.streamLimit)) {
            try KeyFile.read(descriptor: fd, name: "big")
        }
    }

    @Test func aCaptureHandsBackWhatTheChildWroteAndEmptiesItself() async throws {
        let capture = try KeyCapture()
        var command = Command("printf", ["%s", "k3y-bytes"], timeout: .seconds(10))
        command.outputDescriptor = try capture.childDescriptor()
        let result = try await SubprocessCommandRunner().run(command)
        #expect(result.succeeded)
        #expect(result.standardOutput.isEmpty, "the key went to the capture, not the runner's output")
        let key = try capture.take(name: "printf")
        key.withUnsafeBytes { #expect(Array($0) == Array("k3y-bytes".utf8)) }
        #expect(throws: KeyFileProblem.empty) { try capture.take(name: "printf") }
    }
}
