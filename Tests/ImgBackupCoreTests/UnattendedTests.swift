import Foundation
import ImgBackupOS
import Logging
import Synchronization
import Testing

@testable import ImgBackupCore

/// What an unattended run relies on that needs no kernel feature: stop
/// signals as events, the run's result names, the notify command's
/// environment, leftovers of a dead run, journal progress lines, and copy
/// tools that leave imgbackup's own directories out (the real-kernel suite,
/// e2e/test_unattended.py, runs the whole of it).
@Suite(.serialized) struct UnattendedTests {
    @Test func stopSignalsCountAndNameWhatArrives() {
        let signals = StopSignals()
        let seen = Mutex<[String]>([])
        #expect(signals.received == nil)
        // Not installed: only the handler is set, deliver() stands in for the pipe.
        let handler: @Sendable (Int32, Int) -> Void = { signal, count in
            seen.withLock { $0.append("\(StopSignals.name(of: signal)) #\(count)") }
        }
        signals.handle(handler)
        signals.deliver(SIGTERM)
        signals.deliver(SIGINT)
        #expect(signals.received == SIGTERM, "the first signal is the one that stopped the work")
        #expect(seen.withLock { $0 } == ["SIGTERM #1", "SIGINT #2"])
        #expect(StopSignals.name(of: SIGHUP) == "SIGHUP")
    }

    @Test(
        arguments: [
            (nil, nil, RunRecord.Result.success),
            (ImgBackupError(.copyFailed, "x"), nil, .failure),
            (ImgBackupError(.hung, "x"), nil, .hung),
            (ImgBackupError(.copyFailed, "x"), SIGTERM, .interrupted),
            (ImgBackupError(.invalidState, "x"), SIGINT, .interrupted),
            (nil, SIGTERM, .success),  // the signal came once the run was done
        ] as [(ImgBackupError?, Int32?, RunRecord.Result)])
    func resultNamesHowARunEnded(failure: ImgBackupError?, signal: Int32?, expected: RunRecord.Result) {
        #expect(RunRecord.Result(failure: failure, stoppedBy: signal) == expected)
    }

    @Test func anInterruptExitsNineAndSaysWhichSignal() {
        let error = ImgBackupError.interrupted(by: SIGTERM, "the run of 'offsite' stopped and the target was closed")
        #expect(error.code.exitStatus == 9)
        #expect(error.description == "interrupted by SIGTERM: the run of 'offsite' stopped and the target was closed")
    }

    @Test func journalProgressSaysHowFarAndHowFast() {
        let first = BlockDeviceStats(sectorsRead: 0, sectorsWritten: 0)
        let previous = BlockDeviceStats(sectorsRead: 0, sectorsWritten: 2048 * 100)  // 100 MiB
        let now = BlockDeviceStats(sectorsRead: 0, sectorsWritten: 2048 * 160)  // 160 MiB
        let line = JournalProgress.line(
            "run of 'offsite'", elapsed: .seconds(300), interval: .seconds(60), first: first, previous: previous,
            now: now,
            tool: "rsync: 150 MiB copied, 1.00MB/s, 45% of what it has seen so far")
        #expect(
            line
                == "run of 'offsite': 5 min in, 160 MiB written to the image (1 MiB/s over the last 60s); rsync: 150 MiB copied, 1.00MB/s, 45% of what it has seen so far"
        )
        // No device yet (a run still opening): the time alone.
        #expect(
            JournalProgress.line(
                "init of 'x'", elapsed: .seconds(61), interval: .seconds(60), first: nil, previous: nil, now: nil,
                tool: nil) == "init of 'x': 61 s in")
    }

    @Test func theNotifyCommandAndOneFileSystemAreRead() throws {
        let text = """
            [notify]
            command = ["/usr/local/bin/page-me", "--team", "backup"]
            [target.a]
            remote = "host:/backups"
            [target.a.copy]
            method = "rsync"
            sources = ["/"]
            one_file_system = false
            [target.b]
            remote = "host:/backups"
            [target.b.copy]
            method = "borg"
            sources = ["/"]
            """
        let config = try ConfigLoader.parse(text, path: "c.toml")
        #expect(config.notifyCommand == ["/usr/local/bin/page-me", "--team", "backup"])
        #expect(try config.target(named: "a").copy?.oneFileSystem == false)
        #expect(try config.target(named: "b").copy?.oneFileSystem == true, "on by default")

        let badType = #expect(throws: ImgBackupError.self) {
            try ConfigLoader.parse(
                text.replacingOccurrences(of: "one_file_system = false", with: "one_file_system = \"no\""),
                path: "c.toml")
        }
        #expect(badType?.message.contains("one_file_system") == true)
        #expect(badType?.message.contains("true or false") == true)
    }

    @Test func aConfigThatDoesNotLoadStillNamesItsNotifyCommand() throws {
        let path = makeScratchDirectory("notify") + "/imgbackup.toml"
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        try """
        [notify]
        command = ["logger", "-t", "imgbackup"]
        [target.a]
        remote = "host:/backups"
        no_such_key = 1
        """.write(toFile: path, atomically: false, encoding: .utf8)
        #expect(throws: ImgBackupError.self) { try ConfigLoader.load(path: path) }
        #expect(ConfigLoader.notifyCommandLeniently(path: path) == ["logger", "-t", "imgbackup"])
        try "[notify\nbroken".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(ConfigLoader.notifyCommandLeniently(path: path) == nil)
    }

    @Test func theNoticeCarriesResultStatusAndTheEscapedLine() async {
        let runner = FakeRunner()
        let signals = StopSignals()
        let notice = FailureNotice(
            command: ["notify-me", "now"], runner: runner, logger: Logger(label: "test"), stopSignals: signals)
        await notice.send(
            target: "offsite", error: ImgBackupError(.remote, "failed to reach \u{1b}[2Jhost", hint: "check it"))
        signals.deliver(SIGTERM)
        await notice.send(
            target: "offsite", error: ImgBackupError(.interrupted, "interrupted by SIGTERM: the run stopped"))
        let commands = runner.commands
        #expect(commands.count == 2)
        #expect(commands[0].executable == "notify-me" && commands[0].arguments == ["now"])
        #expect(commands[0].environment["IMGBACKUP_TARGET"] == "offsite")
        #expect(commands[0].environment["IMGBACKUP_RESULT"] == "failure")
        #expect(commands[0].environment["IMGBACKUP_EXIT_STATUS"] == "6")
        #expect(commands[0].environment["IMGBACKUP_ERROR"] == "failed to reach \\u{1b}[2Jhost (check it)")
        #expect(commands[1].environment["IMGBACKUP_RESULT"] == "interrupted")
        #expect(commands[1].environment["IMGBACKUP_EXIT_STATUS"] == "9")
    }

    // MARK: leftovers

    func environment(_ root: String) -> OperationEnvironment {
        var environment = OperationEnvironment(
            paths: RuntimePaths(runtimeDirectory: root + "/run", stateDirectory: root + "/state"), runner: FakeRunner(),
            logger: Logger(label: "test"))
        environment.stopSignals = StopSignals()
        return environment
    }

    func target(_ root: String) -> Target {
        Target(
            name: "t", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "t.img", key: .file("/k"),
            mountPoint: root + "/mnt")
    }

    func writeRecord(_ environment: OperationEnvironment, operation: String, pid: Int32) throws {
        try environment.stateStore.save(
            StateRecord(target: "t", operation: .init(name: operation), pid: pid, startedAt: Date(), layers: []))
    }

    @Test func aDeadRunsRecordIsClearedAndTheCallerGoesOn() async throws {
        let root = makeScratchDirectory("leftovers")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let environment = environment(root)
        for operation in ["run", "init", "trim", "resize", "key"] {
            // A pid that cannot be running (above pid_max): the command died.
            try writeRecord(environment, operation: operation, pid: 1 << 23)
            try await TargetLock.clearLeftovers(target(root), environment: environment)
            #expect(
                try environment.stateStore.load(target: "t") == nil,
                "the leftovers of a dead \(operation) were not cleared")
        }
    }

    @Test func aPersonsOpenIsNeverTouched() async throws {
        let root = makeScratchDirectory("leftovers")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let environment = environment(root)
        try environment.stateStore.save(
            StateRecord(
                target: "t", operation: .open, pid: 1 << 23, startedAt: Date(),
                layers: [.filesystem(device: "/dev/mapper/imgbackup-t", mountPoint: root + "/mnt")]))
        let error = await #expect(throws: ImgBackupError.self) {
            try await TargetLock.clearLeftovers(target(root), environment: environment)
        }
        #expect(error?.code == .alreadyOpen)
        #expect(error?.message.contains("opened by 'imgbackup open', pid \(1 << 23)") == true)
        #expect(try environment.stateStore.load(target: "t") != nil, "a person's open was touched")
    }

    /// A record a newer release wrote, of a command this one does not know,
    /// is left alone like a person's open: never torn down on a guess.
    @Test func aRecordOfAnUnknownCommandIsNeverTouched() async throws {
        let root = makeScratchDirectory("leftovers")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let environment = environment(root)
        try writeRecord(environment, operation: "restore", pid: 1 << 23)
        let error = await #expect(throws: ImgBackupError.self) {
            try await TargetLock.clearLeftovers(target(root), environment: environment)
        }
        #expect(error?.code == .alreadyOpen)
        #expect(try environment.stateStore.load(target: "t")?.operation == .unknown("restore"))
    }

    // MARK: copy tools and imgbackup's own directories

    @Test(arguments: [Target.Copy.Method.rsync, .borg])
    func aSourceThatHoldsImgbackupsOwnDirectoriesLeavesThemOut(method: Target.Copy.Method) async throws {
        let root = makeScratchDirectory("owndirs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        // The source holds the image's mount point and the runtime directory:
        // with one_file_system off (nothing is mounted here), only the
        // excludes keep them out.
        let source = root + "/source"
        let mount = source + "/mnt/image"
        let runtime = source + "/run"
        for directory in [source + "/data", mount, runtime + "/t/remote"] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        try "kept".write(toFile: source + "/data/file", atomically: false, encoding: .utf8)
        try "the remote".write(toFile: runtime + "/t/remote/t.img", atomically: false, encoding: .utf8)
        var environment = OperationEnvironment(
            paths: RuntimePaths(runtimeDirectory: runtime, stateDirectory: root + "/state"),
            logger: Logger(label: "test"))
        environment.processEnvironment = ProcessInfo.processInfo.environment
        var copy = Target.Copy(method: method)
        copy.sources = [source]
        copy.oneFileSystem = false
        let target = Target(
            name: "t", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "t.img", key: .file("/k"),
            mountPoint: mount)
        let context = CopyContext(
            target: target, copy: copy, mountPoint: mount,
            now: ISO8601DateFormatter().date(from: "2026-03-01T03:00:00Z")!,
            environment: environment)
        #expect(context.ownMounts.starts(with: [runtime, mount]))
        _ = try await CopyMethods.make(method).copy(context)

        let files: [String]
        switch method {
        case .borg:
            let listing = try await SubprocessCommandRunner().run(
                Command(
                    "borg", ["list", "--short", "\(mount)/borg::2026-03-01T030000Z"], timeout: .seconds(60),
                    environment: [
                        "BORG_BASE_DIR": root + "/state/t/borg", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                    ]))
            files = listing.standardOutput.split(separator: "\n").map(String.init).filter {
                $0.hasSuffix("/file") || $0.contains("t.img") || $0.contains("/mnt/image/")
            }
        default:
            let snapshot = "\(mount)/snapshots/latest\(source)"
            files = (FileManager.default.enumerator(atPath: snapshot)?.allObjects as? [String] ?? []).filter {
                var isDirectory: ObjCBool = false
                return FileManager.default.fileExists(atPath: snapshot + "/" + $0, isDirectory: &isDirectory)
                    && !isDirectory.boolValue
            }
        }
        #expect(files.map { $0.hasSuffix("data/file") } == [true], "\(method): \(files)")
    }
}
