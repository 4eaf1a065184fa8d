import Foundation
import ImgBackupOS

/// What `imgbackup status` reports for one target. Encoded as is for
/// `status --json` (shape documented in docs/usage.md, "status --json").
public struct TargetStatus: Codable, Sendable, Equatable {
    public struct Layer: Codable, Sendable, Equatable {
        /// "sshfs", "nbd", "lock", "loop", "dm-crypt", "filesystem", "image".
        public var layer: String
        public var detail: String
        /// Whether the state record lists it: it went up, or was going up.
        public var recorded: Bool
        /// Checked now (mount table, loop devices, device-mapper); nil where
        /// it can only be known on the remote (the lock file, a partial image).
        public var up: Bool?

        enum CodingKeys: String, CodingKey { case layer, detail, recorded, up }

        /// `up` always present: null says "cannot tell from here".
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(layer, forKey: .layer)
            try container.encode(detail, forKey: .detail)
            try container.encode(recorded, forKey: .recorded)
            try container.encode(up, forKey: .up)
        }
    }

    public struct Record: Codable, Sendable, Equatable {
        /// What put the layers up ("open", "run", ...).
        public var operation: StateRecord.Operation
        public var pid: Int32
        /// Whether that process still runs (false after a crash: `close` cleans up).
        public var running: Bool
        public var startedAt: Date
    }

    public struct Image: Codable, Sendable, Equatable {
        public var apparentBytes: UInt64?
        public var allocatedBytes: UInt64?
        public enum Source: String, Codable, Sendable {
            /// Read through the open transport now.
            case live
            /// Measured by the last trim, or the last run before it closed.
            case trim, run
        }

        public var source: Source
        public var measuredAt: Date

        enum CodingKeys: String, CodingKey { case apparentBytes, allocatedBytes, source, measuredAt }

        /// Both sizes always present: null when the transport cannot tell.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(apparentBytes, forKey: .apparentBytes)
            try container.encode(allocatedBytes, forKey: .allocatedBytes)
            try container.encode(source, forKey: .source)
            try container.encode(measuredAt, forKey: .measuredAt)
        }
    }

    public struct Usage: Codable, Sendable, Equatable {
        public var sizeBytes: UInt64
        public var usedBytes: UInt64
        public var availableBytes: UInt64
    }

    public var target: String
    public var transport: String
    public var remote: String
    public var mountPoint: String
    public enum State: String, Codable, Sendable {
        /// The filesystem is mounted.
        case open
        case closed
        /// Some layers up (or a state record left): run `close`.
        case partial
    }

    public var state: State
    public var layers: [Layer]
    public var stateRecord: Record?
    /// The pid of the imgbackup command holding the target's lock, if one does.
    public var lockHolder: Int32?
    public var lastRun: RunRecord?
    public var lastSuccess: Date?
    public var image: Image?
    public var mountUsage: Usage?

    enum CodingKeys: String, CodingKey {
        case target, transport, remote, mountPoint, state, layers, stateRecord, lockHolder, lastRun, lastSuccess, image,
            mountUsage
    }

    /// Every key always present (null when unknown), so scripts can rely on the shape.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(target, forKey: .target)
        try container.encode(transport, forKey: .transport)
        try container.encode(remote, forKey: .remote)
        try container.encode(mountPoint, forKey: .mountPoint)
        try container.encode(state, forKey: .state)
        try container.encode(layers, forKey: .layers)
        try container.encode(stateRecord, forKey: .stateRecord)
        try container.encode(lockHolder, forKey: .lockHolder)
        try container.encode(lastRun, forKey: .lastRun)
        try container.encode(lastSuccess, forKey: .lastSuccess)
        try container.encode(image, forKey: .image)
        try container.encode(mountUsage, forKey: .mountUsage)
    }
}

/// Builds a TargetStatus from the state record, the live system and the run
/// history. Reads only: takes no lock and changes nothing, so it is safe to
/// run at any time, also while a run is going.
public struct StatusOperation {
    public let target: Target
    public let environment: OperationEnvironment

    public init(target: Target, environment: OperationEnvironment) {
        self.target = target
        self.environment = environment
    }

    public func run() async throws(ImgBackupError) -> TargetStatus {
        let paths = environment.paths
        let record = try StateStore(paths: paths).load(target: target.name)
        let recorded = record?.layers ?? []
        var layers = recorded.map { layer in
            TargetStatus.Layer(layer: layer.layerName, detail: layer.description, recorded: true, up: layer.isUp)
        }
        // Without a record (or with one that lost track), the layers this
        // target would have can still be up: say so, close takes them down.
        for layer in target.layersUp(besides: recorded, paths) {
            layers.append(
                TargetStatus.Layer(layer: layer.layerName, detail: layer.description, recorded: false, up: true))
        }
        let mounted =
            MountTable.mount(at: target.mountPoint).map { $0.source.hasPrefix("/dev/") } ?? false
            && layers.contains { $0.layer == FilesystemLayer.kind && $0.up == true }
        let anyUp = layers.contains { $0.up == true }
        let history = RunHistory(paths: paths)
        let runs = history.records(target.name)
        return TargetStatus(
            target: target.name,
            transport: openTransport(record) ?? target.transport.rawValue,
            remote: target.remote.description,
            mountPoint: target.mountPoint,
            state: mounted ? .open : (anyUp || record != nil ? .partial : .closed),
            layers: layers,
            stateRecord: record.map {
                TargetStatus.Record(
                    operation: $0.operation, pid: $0.pid, running: kill($0.pid, 0) == 0, startedAt: $0.startedAt)
            },
            lockHolder: FileLock.holder(of: paths.lockFile(target.name)),
            lastRun: runs.last,
            lastSuccess: runs.last { $0.result == .success }?.end,
            image: await image(record),
            mountUsage: mounted ? Self.usage(target.mountPoint) : nil)
    }

    private func openTransport(_ record: StateRecord?) -> String? {
        record?.layers.lazy.compactMap { $0.imageTransport(of: target, environment.paths)?.transport.rawValue }.first
    }

    /// The image's sizes: live through the open transport, else what the
    /// last trim or run measured.
    private func image(_ record: StateRecord?) async -> TargetStatus.Image? {
        await ImageMeasurement.live(record?.layers ?? [], target: target, paths: environment.paths)
            ?? ImageMeasurement(paths: environment.paths).last(target.name)
    }

    static func usage(_ mountPoint: String) -> TargetStatus.Usage? {
        guard let capacity = try? LocalFiles.capacity(mountPoint) else { return nil }
        return TargetStatus.Usage(
            sizeBytes: capacity.total, usedBytes: capacity.total - min(capacity.free, capacity.total),
            availableBytes: capacity.available)
    }
}

#if canImport(Glibc)
    import Glibc
#endif

extension TargetStatus {
    /// `status --json`: one object holding every target asked for.
    public static func json(_ statuses: [TargetStatus]) throws -> String {
        let encoder = RunHistory.encoder()
        encoder.outputFormatting.insert(.prettyPrinted)
        return String(decoding: try encoder.encode(["targets": statuses]), as: UTF8.self)
    }

    /// `status` for people: a headline and one line per thing known.
    public func text(now: Date = Date()) -> String {
        var lines = ["\(target): \(headline)"]
        if !layers.isEmpty {
            lines.append(
                "  layers: "
                    + layers.map { "\($0.layer) \($0.up.map { $0 ? "up" : "DOWN" } ?? "recorded")" }.joined(
                        separator: ", "))
        }
        if let stateRecord, stateRecord.running {
            lines.append(
                "  busy: '\(stateRecord.operation)' (pid \(stateRecord.pid)) since \(Self.time(stateRecord.startedAt))")
        } else if let stateRecord, state == .partial {
            lines.append("  left by: '\(stateRecord.operation)' (pid \(stateRecord.pid), no longer running)")
        }
        if let lockHolder { lines.append("  locked by: pid \(lockHolder)") }
        if let lastRun {
            var words = ["\(lastRun.result?.rawValue ?? "running") at \(Self.time(lastRun.start))"]
            if let duration = lastRun.duration { words.append("in \(Self.duration(duration))") }
            if let written = lastRun.bytesWritten { words.append("\(ByteSize.format(written)) written") }
            if let sent = lastRun.wireBytesSent, let received = lastRun.wireBytesReceived {
                words.append("\(ByteSize.format(sent)) sent and \(ByteSize.format(received)) received on the wire")
            }
            if let point = lastRun.point { words.append("point \(point)") }
            if let exitCode = lastRun.exitCode, exitCode != 0 { words.append("exit \(exitCode)") }
            lines.append("  last run: " + words.joined(separator: ", "))
            if let error = lastRun.error { lines.append("    \(error)") }
        } else {
            lines.append("  last run: none recorded")
        }
        if lastRun?.result != .success {
            lines.append(
                "  last success: "
                    + (lastSuccess.map { "\(Self.time($0)) (\(Self.duration(now.timeIntervalSince($0))) ago)" }
                        ?? "never"))
        }
        if let image {
            let apparent = image.apparentBytes.map(ByteSize.format) ?? "unknown"
            let allocated = image.allocatedBytes.map(ByteSize.format) ?? "unknown"
            let when = image.source == .live ? "now" : "at the trim of \(Self.time(image.measuredAt))"
            lines.append("  image: \(apparent) apparent, \(allocated) allocated on the remote (\(when))")
        }
        if let mountUsage {
            lines.append(
                "  filesystem: \(ByteSize.format(mountUsage.usedBytes)) used of \(ByteSize.format(mountUsage.sizeBytes)), \(ByteSize.format(mountUsage.availableBytes)) free"
            )
        }
        return lines.joined(separator: "\n")
    }

    private var headline: String {
        switch state {
        case .open:
            let readOnly = stateRecord?.operation == .openReadOnly ? " read-only" : ""
            return "open\(readOnly) at \(mountPoint) over \(transport)"
        case .closed: return "closed (\(transport), \(remote))"
        case .partial: return "partly up: run 'imgbackup close \(target)'"
        }
    }

    static func time(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    static func duration(_ seconds: TimeInterval) -> String {
        let total = Int(seconds.rounded())
        if total < 60 { return "\(total)s" }
        if total < 3600 { return "\(total / 60)m \(total % 60)s" }
        if total < 86400 { return "\(total / 3600)h \(total % 3600 / 60)m" }
        return "\(total / 86400)d \(total % 86400 / 3600)h"
    }
}
