import Foundation
import Testing

@testable import ImgBackupCore

@Suite struct RetentionTests {
    /// Daily runs at 03:00 UTC from `first` for `days` days.
    func dailyRuns(from first: String, days: Int) -> [Date] {
        let start = ISO8601DateFormatter().date(from: first)!
        return (0..<days).map { start.addingTimeInterval(Double($0) * 86_400) }
    }

    func names(_ dates: some Collection<Date>) -> [String] { dates.sorted().map(BackupPointName.make) }

    @Test func keepsTheLastSevenDays() {
        let runs = dailyRuns(from: "2026-01-01T03:00:00Z", days: 30)
        let kept = RetentionPolicy(keepDaily: 7).kept(runs)
        #expect(names(kept) == names(runs.suffix(7)))
    }

    @Test func weeklyAndMonthlyKeepTheNewestOfEachPeriod() {
        // 2026-01-01 is a Thursday. 90 daily runs: Jan 1 .. Mar 31 (a Tuesday).
        let runs = dailyRuns(from: "2026-01-01T03:00:00Z", days: 90)
        let kept = RetentionPolicy(keepDaily: 3, keepWeekly: 2, keepMonthly: 3).kept(runs)
        #expect(
            names(kept) == [
                "2026-01-31T030000Z",  // January's newest
                "2026-02-28T030000Z",  // February's newest
                "2026-03-29T030000Z",  // daily, and the newest of last week (ISO weeks end on Sunday)
                "2026-03-30T030000Z",  // daily
                "2026-03-31T030000Z",  // the latest; also this week's and March's newest
            ])
    }

    @Test func theLatestIsAlwaysKeptEvenWithNothingToKeep() {
        let runs = dailyRuns(from: "2026-05-01T03:00:00Z", days: 5)
        let policy = RetentionPolicy()
        #expect(policy.kept(runs) == [runs.last!])
        #expect(policy.pruned(runs) == Array(runs.dropLast()))
        #expect(policy.pruned([]) == [])
    }

    @Test func severalRunsADayKeepOnlyTheDaysNewest() {
        let start = ISO8601DateFormatter().date(from: "2026-06-01T00:00:00Z")!
        let runs = (0..<12).map { start.addingTimeInterval(Double($0) * 6 * 3600) }  // 4 a day, 3 days
        let kept = RetentionPolicy(keepDaily: 2).kept(runs)
        #expect(names(kept) == ["2026-06-02T180000Z", "2026-06-03T180000Z"])
    }

    @Test func noRetentionTableMeansNoPruning() {
        #expect(RetentionPolicy(nil) == nil)
        #expect(RetentionPolicy(Target.Retention(keepDaily: 2)) == RetentionPolicy(keepDaily: 2))
    }

    @Test func backupPointNamesRoundTripAndRejectEverythingElse() {
        let date = ISO8601DateFormatter().date(from: "2026-11-22T03:15:09Z")!
        #expect(BackupPointName.make(date) == "2026-11-22T031509Z")
        #expect(BackupPointName.parse("2026-11-22T031509Z") == date)
        for other in [
            "latest", ".incomplete", "2026-11-22", "2026-11-22T031509", "2026-13-22T031509Z", "x2026-11-22T031509Z",
        ] {
            #expect(BackupPointName.parse(other) == nil, "\(other)")
        }
    }
}

@Suite struct CopyOutputParsingTests {
    @Test func rsyncProgressAndStats() {
        #expect(
            RsyncCopy.progressLine("     32,768,000  45%   31.25MB/s    0:00:10 (xfr#3, ir-chk=10/20)")
                == "rsync: 31.3 MiB copied, 31.25MB/s, 45% of what it has seen so far, ETA 0:00:10")
        #expect(RsyncCopy.progressLine("sending incremental file list") == nil)
        let stats = """
            Number of files: 12 (reg: 10, dir: 2)
            Total file size: 9000 bytes
            Total transferred file size: 4096 bytes
            """
        #expect(RsyncCopy.transferredBytes(stats) == 4096)
        #expect(RsyncCopy.transferredBytes("nothing") == nil)
    }

    @Test func borgProgressAndJSON() {
        #expect(BorgCopy.progressLine("1.23 MB O 1.00 MB C 512 kB D 12 N etc/hosts") == "borg: 1.23 MB read, 12 files")
        #expect(BorgCopy.progressLine("Creating archive") == nil)
        #expect(
            BorgCopy.originalSize(#"{"archive": {"name": "x", "stats": {"original_size": 123456, "nfiles": 3}}}"#)
                == 123_456)
        #expect(BorgCopy.originalSize("not json") == nil)
        let date = ISO8601DateFormatter().date(from: "2026-11-22T03:15:09Z")!
        #expect(BorgCopy.borgTimestamp(date) == "2026-11-22T03:15:09")
        #expect(BorgCopy.segmentSize(filesystemBytes: 60 << 20) == 8 << 20)
        #expect(BorgCopy.segmentSize(filesystemBytes: 3200 << 20) == 100 << 20)
        #expect(BorgCopy.segmentSize(filesystemBytes: 50 << 30) == 500 << 20)
    }

    @Test func commandSubstitutesMountAndTargetInEveryArgument() {
        #expect(
            CommandCopy.substitute(
                ["/usr/bin/tool", "--into={mount}/data", "{target}", "{mount}"], mount: "/mnt/x", target: "x")
                == ["/usr/bin/tool", "--into=/mnt/x/data", "x", "/mnt/x"])
        #expect(
            CommandCopy.environment(mount: "/mnt/x", target: "x") == [
                "IMGBACKUP_MOUNT": "/mnt/x", "IMGBACKUP_TARGET": "x",
            ])
    }
}
