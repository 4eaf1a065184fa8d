import Foundation

/// Which backup points to keep: the newest point of each of the last N days,
/// weeks and months that have one (the way borg prune and most snapshot tools
/// count), and the latest point always. Pure: the caller passes the points and
/// the calendar, so tests cover years of runs without waiting a day.
public struct RetentionPolicy: Sendable, Equatable {
    public var keepDaily: Int
    public var keepWeekly: Int
    public var keepMonthly: Int

    public init(keepDaily: Int = 0, keepWeekly: Int = 0, keepMonthly: Int = 0) {
        self.keepDaily = keepDaily
        self.keepWeekly = keepWeekly
        self.keepMonthly = keepMonthly
    }

    /// nil when the target has no `[retention]`: then nothing is ever pruned.
    public init?(_ retention: Target.Retention?) {
        guard let retention else { return nil }
        self.init(
            keepDaily: retention.keepDaily ?? 0, keepWeekly: retention.keepWeekly ?? 0,
            keepMonthly: retention.keepMonthly ?? 0)
    }

    /// UTC, weeks starting on Monday (ISO 8601): the same answer on every machine.
    public static let calendar: Calendar = {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// The points to keep, out of `points` (any order).
    public func kept(_ points: [Date], calendar: Calendar = RetentionPolicy.calendar) -> Set<Date> {
        let newestFirst = points.sorted(by: >)
        var keep = Set<Date>()
        if let latest = newestFirst.first { keep.insert(latest) }
        func keepNewestPerPeriod(_ count: Int, _ period: (Date) -> DateComponents) {
            var periods = Set<DateComponents>()
            for point in newestFirst where periods.count < count {
                if periods.insert(period(point)).inserted { keep.insert(point) }
            }
        }
        keepNewestPerPeriod(keepDaily) { calendar.dateComponents([.year, .month, .day], from: $0) }
        keepNewestPerPeriod(keepWeekly) { calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: $0) }
        keepNewestPerPeriod(keepMonthly) { calendar.dateComponents([.year, .month], from: $0) }
        return keep
    }

    /// The points to delete: everything not kept.
    public func pruned(_ points: [Date], calendar: Calendar = RetentionPolicy.calendar) -> [Date] {
        let keep = kept(points, calendar: calendar)
        return points.filter { !keep.contains($0) }.sorted()
    }
}

/// Names of backup points (rsync snapshot directories, borg archives, btrfs
/// snapshots): the UTC time of the run, sortable, no colons (they upset
/// tools and file systems), and parseable back for retention.
public enum BackupPointName {
    public static func make(_ date: Date) -> String { formatter().string(from: date) }

    /// The time in a name made by `make`, or nil for anything else (a
    /// directory a person put there is never pruned).
    public static func parse(_ name: String) -> Date? {
        guard let date = formatter().date(from: name), make(date) == name else { return nil }
        return date
    }

    private static func formatter() -> DateFormatter {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HHmmss'Z'"
        return formatter
    }
}
