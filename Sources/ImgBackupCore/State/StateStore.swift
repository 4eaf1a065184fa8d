import Foundation
import ImgBackupOS

/// The state record of one target: which layers are (or may be) up, written
/// before each step so a crash at any point leaves a record `close` can
/// finish from.
public struct StateRecord: Codable, Sendable, Equatable {
    /// The command that put the layers up, encoded as its name ("open",
    /// "run", ...) as it always was. A name this release does not know (a
    /// newer release's) still loads, and is treated as a person's `open`.
    public enum Operation: Codable, Sendable, Hashable, CustomStringConvertible {
        case open, run, trim, resize, key, close
        case initialize
        /// `open --read-only`.
        case openReadOnly
        case unknown(String)

        public init(name: String) {
            switch name {
            case "open": self = .open
            case "open-read-only": self = .openReadOnly
            case "run": self = .run
            case "init": self = .initialize
            case "trim": self = .trim
            case "resize": self = .resize
            case "key": self = .key
            case "close": self = .close
            default: self = .unknown(name)
            }
        }

        public var name: String {
            switch self {
            case .open: "open"
            case .openReadOnly: "open-read-only"
            case .run: "run"
            case .initialize: "init"
            case .trim: "trim"
            case .resize: "resize"
            case .key: "key"
            case .close: "close"
            case .unknown(let name): name
            }
        }

        public var description: String { name }

        /// What brings a stack up without a person waiting on it: when such
        /// a command's process is gone, its leftovers are the next command's
        /// to take down. A stack a person brought up with `open` is theirs.
        public var isUnattended: Bool {
            switch self {
            case .run, .initialize, .trim, .resize, .key: true
            case .open, .openReadOnly, .close, .unknown: false
            }
        }

        /// A stack a person opened, to work in until they close it.
        public var isByHand: Bool { self == .open || self == .openReadOnly }

        public init(from decoder: any Decoder) throws {
            self.init(name: try decoder.singleValueContainer().decode(String.self))
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(name)
        }
    }

    public var target: String
    /// What put the layers up.
    public var operation: Operation
    public var pid: Int32
    public var startedAt: Date
    public var layers: [LayerRecord]
}

/// Where a LayerStack persists its records. The real one writes JSON files;
/// unit tests can keep them in memory.
public protocol StateJournal: Sendable {
    func save(_ layers: [LayerRecord]) throws
    func clear() throws
}

/// JSON state records under the runtime directory, replaced atomically.
public struct StateStore: Sendable {
    public let paths: RuntimePaths

    public init(paths: RuntimePaths) { self.paths = paths }

    public func load(target: String) throws(ImgBackupError) -> StateRecord? {
        let path = paths.stateRecord(target)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            return try decoder.decode(StateRecord.self, from: data)
        } catch {
            throw ImgBackupError(
                .invalidState, "failed to read state record \(path): \(error)",
                hint: "check by hand what is mounted (findmnt, dmsetup ls, losetup -a), then remove the file")
        }
    }

    public func save(_ record: StateRecord) throws {
        let path = paths.stateRecord(record.target)
        try LocalFiles.makeDirectories(paths.runtimeDirectory)
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(record).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    public func remove(target: String) throws {
        let path = paths.stateRecord(target)
        if FileManager.default.fileExists(atPath: path) {
            try FileManager.default.removeItem(atPath: path)
        }
    }

    /// A journal bound to one record: the stack saves its layers through it.
    public func journal(for target: String, operation: StateRecord.Operation) -> any StateJournal {
        FileJournal(store: self, target: target, operation: operation, startedAt: Date())
    }

    private struct FileJournal: StateJournal {
        let store: StateStore
        let target: String
        let operation: StateRecord.Operation
        let startedAt: Date

        func save(_ layers: [LayerRecord]) throws {
            try store.save(
                StateRecord(target: target, operation: operation, pid: getpid(), startedAt: startedAt, layers: layers))
        }

        func clear() throws { try store.remove(target: target) }
    }
}
