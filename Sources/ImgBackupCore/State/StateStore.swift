import Foundation
import ImgBackupOS

/// The state record of one target: which layers are (or may be) up, written
/// before each step so a crash at any point leaves a record `close` can
/// finish from.
public struct StateRecord: Codable, Sendable, Equatable {
    public var target: String
    /// "open" or "init": what put the layers up.
    public var operation: String
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
    public func journal(for target: String, operation: String) -> any StateJournal {
        FileJournal(store: self, target: target, operation: operation, startedAt: Date())
    }

    private struct FileJournal: StateJournal {
        let store: StateStore
        let target: String
        let operation: String
        let startedAt: Date

        func save(_ layers: [LayerRecord]) throws {
            try store.save(
                StateRecord(target: target, operation: operation, pid: getpid(), startedAt: startedAt, layers: layers))
        }

        func clear() throws { try store.remove(target: target) }
    }
}
