import Foundation
import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// How `close` stops what a killed run left in the mount: processes found
/// through /proc, stopped, and waited for until they are really gone.
@Suite struct ProcessTableTests {
    /// A child that lives in `directory` (its working directory) until stopped.
    func startSleeping(in directory: String, ignoringTerm: Bool = false) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", ignoringTerm ? "trap '' TERM; while :; do sleep 0.1; done" : "exec sleep 600"]
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        try process.run()
        return process
    }

    @Test func aZombieIsNotAlive() throws {
        #expect(ProcessTable.isAlive(getpid()))
        #expect(!ProcessTable.isAlive(1 << 23), "above pid_max")
        let child = try startSleeping(in: "/")
        kill(child.processIdentifier, SIGKILL)
        // Not reaped yet (Foundation reaps on its own schedule): dead all the same.
        let deadline = Date().addingTimeInterval(5)
        while ProcessTable.isAlive(child.processIdentifier), Date() < deadline { usleep(10_000) }
        #expect(!ProcessTable.isAlive(child.processIdentifier))
    }

    @Test func everyUserOfADirectoryIsStoppedAndWaitedFor() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("imgbackup-users-\(getpid())")
            .path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let polite = try startSleeping(in: directory)
        // One that ignores SIGTERM: only the SIGKILL after the grace ends it.
        let stubborn = try startSleeping(in: directory, ignoringTerm: true)
        let users = Set(ProcessTable.processes(using: directory))
        #expect(users.isSuperset(of: [polite.processIdentifier, stubborn.processIdentifier]))

        let left = await ProcessTable.stopAll(using: directory, grace: .milliseconds(300), deadline: .seconds(10))
        #expect(left.isEmpty)
        #expect(!ProcessTable.isAlive(polite.processIdentifier))
        #expect(!ProcessTable.isAlive(stubborn.processIdentifier))
        #expect(ProcessTable.processes(using: directory).filter(ProcessTable.isAlive).isEmpty)
    }
}
