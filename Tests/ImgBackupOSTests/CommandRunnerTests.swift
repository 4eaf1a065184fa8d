import Foundation
import Synchronization
import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct CommandRunnerTests {
    let runner = SubprocessCommandRunner()

    @Test func capturesOutputAndExitStatus() async throws {
        let result = try await runner.run(
            Command("sh", ["-c", "echo out; echo err >&2; exit 3"], timeout: .seconds(10)))
        #expect(result.termination == .exited(3))
        #expect(!result.succeeded)
        #expect(result.standardOutput == "out\n")
        #expect(result.standardError == "err\n")
        #expect(result.failureSummary == "sh exited with status 3: err")
    }

    /// A tool relaying a remote (ssh, sshfs) can print a line of any length:
    /// the error quotes a clipped piece of it.
    @Test func aLongLineOfOutputIsClippedInTheSummary() async throws {
        let result = try await runner.run(
            Command("sh", ["-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"], timeout: .seconds(10)))
        #expect(result.standardError.count > 60_000)
        let summary = result.failureSummary
        #expect(summary.hasPrefix("sh exited with status 1: xxx"))
        #expect(summary.hasSuffix("x\u{2026}"))
        #expect(summary.count == "sh exited with status 1: ".count + CommandResult.lineLimit)
    }

    /// A secret reaches the child on stdin only: not in its argv or environment.
    @Test func secretInputArrivesOnStandardInputOnly() async throws {
        var bytes = Array("hunter2-passphrase".utf8)
        let secret = SecureBytes(consuming: &bytes)
        var command = Command(
            "sh", ["-c", "cat; printf '|'; tr '\\0' ' ' < /proc/$$/cmdline; tr '\\0' ' ' < /proc/$$/environ"],
            timeout: .seconds(10))
        command.input = .secret(secret)
        let result = try await runner.run(command)
        #expect(result.succeeded)
        let parts = result.standardOutput.split(separator: "|", maxSplits: 1)
        #expect(parts.first == "hunter2-passphrase")
        #expect(parts.count == 2 && !parts[1].contains("hunter2"))
    }

    /// `printf ... | tr a-z A-Z` through a CommandPipe, no shell between them.
    @Test func aPipeConnectsTwoCommands() async throws {
        let pipe = try CommandPipe.make()
        var producer = Command("printf", ["one two\\n"], timeout: .seconds(10))
        producer.outputDescriptor = pipe.write
        var consumer = Command("tr", ["a-z", "A-Z"], timeout: .seconds(10))
        consumer.input = .descriptor(pipe.read)
        async let produced = runner.run(producer)
        async let consumed = runner.run(consumer)
        let (first, second) = try await (produced, consumed)
        #expect(first.succeeded && second.succeeded)
        #expect(second.standardOutput == "ONE TWO\n")
    }

    /// Output is seen while the command still runs, not only at its end.
    @Test func observerSeesOutputWhileTheCommandRuns() async throws {
        let seen = Mutex<[String]>([])
        let marker = "/var/tmp/imgbackup-observer-\(getpid())"
        var command = Command(
            "sh", ["-c", "echo first; while [ ! -e \(marker) ]; do sleep 0.1; done; echo second >&2"],
            timeout: .seconds(20))
        command.observer = { output in
            seen.withLock { $0.append(output.text) }
            // The command only finishes once the observer has seen its first line.
            if output.text.contains("first") { _ = creat(marker, 0o600) }
        }
        defer { unlink(marker) }
        let result = try await runner.run(command)
        #expect(result.succeeded)
        #expect(seen.withLock { $0 } == ["first\n", "second\n"])
    }

    @Test func environmentIsMinimal() async throws {
        setenv("IMGBACKUP_TEST_SECRET", "must-not-leak", 1)
        let result = try await runner.run(Command("env", [], timeout: .seconds(10)))
        #expect(!result.standardOutput.contains("IMGBACKUP_TEST_SECRET"))
        #expect(result.standardOutput.contains("LC_ALL=C"))
    }

    @Test func argumentsAreNeverInterpretedByAShell() async throws {
        let tricky = "$(touch /tmp/imgbackup-pwned) ; `id` \"quoted\" 'single'\nnewline"
        let result = try await runner.run(Command("printf", ["%s", tricky], timeout: .seconds(10)))
        #expect(result.standardOutput == tricky)
        #expect(access("/tmp/imgbackup-pwned", F_OK) != 0)
    }

    @Test func outputIsBoundedToItsTail() async throws {
        let result = try await runner.run(
            Command("sh", ["-c", "seq 1 100000"], timeout: .seconds(10), outputLimit: 64))
        #expect(result.standardOutput.utf8.count == 64)
        #expect(result.standardOutput.hasSuffix("99999\n100000\n"))
    }

    @Test func aDaemonHoldingItsOutputDoesNotBlockTheRunner() async throws {
        // Like sshfs: the command exits, a child it left behind keeps stdout/stderr open.
        let marker = "imgbackup-test-daemon-\(getpid())"
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await runner.run(
            Command("bash", ["-c", "(exec -a \(marker) sleep 30) & echo started"], timeout: .seconds(20)))
        #expect(result.succeeded)
        #expect(clock.now - start < .seconds(10))
        await ProcessTable.terminate(ProcessTable.processes(named: marker, withArgument: "30"), grace: .seconds(1))
    }

    @Test func deadlineTearsDownTheWholeProcessGroup() async throws {
        let marker = "imgbackup-test-group-\(getpid())"
        let command = Command(
            "bash", ["-c", "trap '' TERM; (exec -a \(marker) sleep 300) & wait"], timeout: .milliseconds(500),
            terminationGrace: .milliseconds(500))
        let clock = ContinuousClock()
        let start = clock.now
        let error = await #expect(throws: DeadlineExceeded.self) { try await runner.run(command) }
        #expect(error?.deadline == .milliseconds(500))
        #expect(clock.now - start < .seconds(8))
        // The grandchild went down with the group (SIGKILL after the ignored SIGTERM).
        try await Task.sleep(for: .milliseconds(300))
        #expect(ProcessTable.processes(named: marker, withArgument: "300").isEmpty)
    }

    /// A stall watcher cancels the command it watches: the process must go
    /// down with the cancellation, not run on until its own deadline.
    @Test func cancellingTheCallerTearsTheProcessDown() async throws {
        let marker = "imgbackup-test-cancel-\(getpid())"
        let command = Command(
            "bash", ["-c", "(exec -a \(marker) sleep 300) & wait"], timeout: .seconds(3600),
            terminationGrace: .milliseconds(500))
        let clock = ContinuousClock()
        let start = clock.now
        let task = Task { try await runner.run(command) }
        // Until the grandchild runs (a loaded machine may take a while to start bash).
        while ProcessTable.processes(named: marker, withArgument: "300").isEmpty && clock.now - start < .seconds(20) {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(!ProcessTable.processes(named: marker, withArgument: "300").isEmpty)
        let cancelled = clock.now
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(clock.now - cancelled < .seconds(8))
        try await Task.sleep(for: .milliseconds(300))
        #expect(ProcessTable.processes(named: marker, withArgument: "300").isEmpty)
    }

    @Test func missingExecutableIsNamed() async {
        let error = await #expect(throws: ExecutableNotFound.self) {
            try await runner.run(Command("imgbackup-no-such-tool", [], timeout: .seconds(1)))
        }
        #expect(error?.name == "imgbackup-no-such-tool")
    }
}

@Suite struct DeadlineTests {
    @Test func abandonsABlockedCallAtTheDeadline() async {
        let clock = ContinuousClock()
        let start = clock.now
        let error = await #expect(throws: DeadlineExceeded.self) {
            try await withAbandonableDeadline(.milliseconds(200), operation: "a stuck call") {
                sleep(10)  // stands in for a syscall stuck in the kernel
            }
        }
        // Well before the call would have ended by itself; with room for a
        // loaded machine (the host tests run in parallel: 2.2 s was seen).
        #expect(clock.now - start < .seconds(8))
        #expect(error?.description == "a stuck call did not finish within 200ms")
    }

    @Test func returnsTheResultOfAFastCall() async throws {
        #expect(try await withAbandonableDeadline(.seconds(5), operation: "fast") { 42 } == 42)
    }

    @Test func passesErrorsThrough() async {
        await #expect(throws: SystemCallError.self) {
            try await withAbandonableDeadline(.seconds(5), operation: "failing") {
                throw SystemCallError(call: "open", object: "/x", errno: ENOENT)
            }
        }
    }

    /// More serving loops than the cooperative pool has threads, each
    /// blocked until a task it started has run (as the S3 bridge's FUSE
    /// loop waits on its ping's task): none may take a thread of the pool.
    @Test func servingLoopsLeaveThePoolFree() async {
        let loops = ProcessInfo.processInfo.activeProcessorCount + 2
        let served = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<loops {
                group.addTask {
                    await onThreadOfItsOwn(named: "loop \(index)") { () -> Bool in
                        let done = DispatchSemaphore(value: 0)
                        Task { done.signal() }
                        return done.wait(timeout: .now() + 20) == .success
                    }
                }
            }
            return await group.reduce(into: 0) { count, ran in count += ran ? 1 : 0 }
        }
        #expect(served == loops, "a request's task never got a thread")
    }

    @Test func aLoopsErrorComesThrough() async {
        await #expect(throws: SystemCallError.self) {
            try await onThreadOfItsOwn(named: "failing") { () throws(SystemCallError) in
                throw SystemCallError(call: "fuse_session_mount", object: "/x", errno: EACCES)
            }
        }
    }
}

@Suite struct MountTableTests {
    @Test func parsesEscapedMountPoints() {
        let text = """
            36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            40 25 0:52 / /run/imgbackup/t/remote rw,nosuid,nodev shared:1 - fuse.sshfs u@h:/srv rw,user_id=0
            """
        let entries = MountTable.parse(text)
        #expect(entries.count == 2)
        #expect(entries[0].mountPoint == "/mnt/with space")
        #expect(entries[1].filesystemType == "fuse.sshfs")
        #expect(entries[1].device == "0:52")
        #expect(entries[1].source == "u@h:/srv")
    }

    @Test func seesAFilesystemThatMadeItselfReadOnly() {
        let text = """
            50 25 254:0 / /mnt/t rw,relatime shared:1 - ext4 /dev/mapper/imgbackup-t ro,relatime,errors=remount-ro
            51 25 254:1 / /mnt/u rw,relatime shared:2 - ext4 /dev/mapper/imgbackup-u rw,relatime,errors=remount-ro
            52 25 254:2 / /mnt/v ro,relatime shared:3 - ext4 /dev/mapper/imgbackup-v ro,relatime,noload
            """
        let entries = MountTable.parse(text)
        #expect(entries.map(\.turnedReadOnly) == [true, false, false])
        #expect(entries[1].superOptions.contains("errors=remount-ro"))
    }

    @Test func findsTheRootMount() {
        #expect(MountTable.isMountPoint("/"))
        #expect(!MountTable.isMountPoint("/definitely/not/a/mount"))
    }
}
