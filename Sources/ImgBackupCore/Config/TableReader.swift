import Foundation
import TOMLKit

/// Reads one TOML table, remembering which keys were asked for, so that
/// whatever is left over is reported as unknown. Every error names the file,
/// the line and the dotted key.
final class TableReader {
    struct Context {
        let path: String
        let lines: LineLocator
    }

    let table: TOMLTable
    let keyPath: [String]
    let context: Context
    private var consumed: Set<String> = []

    init(table: TOMLTable, keyPath: [String], context: Context) {
        self.table = table
        self.keyPath = keyPath
        self.context = context
    }

    /// Keys in the order they appear in the file (TOMLKit returns them sorted).
    var keysInFileOrder: [String] {
        table.keys.sorted { lhs, rhs in
            (context.lines.line(for: keyPath + [lhs]) ?? .max, lhs) < (
                context.lines.line(for: keyPath + [rhs]) ?? .max, rhs
            )
        }
    }

    func error(_ key: String?, _ message: String) -> ImgBackupError {
        let path = keyPath + (key.map { [$0] } ?? [])
        let line = context.lines.line(for: path) ?? context.lines.line(for: keyPath)
        let location = line.map { "\(context.path):\($0)" } ?? context.path
        // Values quoted in the message may hold newlines or other control
        // characters: escaped, the error stays one line.
        let text = "\(location): \(path.joined(separator: ".")): \(message)"
        return ImgBackupError(.config, text.escapingControlCharacters)
    }

    private func value(_ key: String) -> TOMLValueConvertible? {
        consumed.insert(key)
        return table[key]
    }

    private func typeError(_ key: String, expected: String, got value: TOMLValueConvertible) -> ImgBackupError {
        error(key, "expected \(expected), found a TOML \(value.type.rawValue)")
    }

    func string(_ key: String) throws(ImgBackupError) -> String? {
        guard let value = value(key) else { return nil }
        guard let string = value.string else { throw typeError(key, expected: "a string", got: value) }
        return string
    }

    func int(_ key: String) throws(ImgBackupError) -> Int? {
        guard let value = value(key) else { return nil }
        guard let int = value.int else { throw typeError(key, expected: "an integer", got: value) }
        return int
    }

    func bool(_ key: String) throws(ImgBackupError) -> Bool? {
        guard let value = value(key) else { return nil }
        guard let bool = value.bool else { throw typeError(key, expected: "true or false", got: value) }
        return bool
    }

    func count(_ key: String) throws(ImgBackupError) -> Int? {
        guard let int = try int(key) else { return nil }
        guard int >= 0 else { throw error(key, "must not be negative") }
        return int
    }

    func stringArray(_ key: String) throws(ImgBackupError) -> [String]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw typeError(key, expected: "an array of strings", got: value) }
        var strings: [String] = []
        for element in array {
            guard let string = element.string else {
                throw error(key, "expected an array of strings, found a TOML \(element.type.rawValue) in it")
            }
            strings.append(string)
        }
        return strings
    }

    /// An array of argument vectors: `[["systemctl", "stop", "db"], [...]]`.
    func commandArray(_ key: String) throws(ImgBackupError) -> [[String]]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw typeError(key, expected: "an array of commands", got: value) }
        var commands: [[String]] = []
        for element in array {
            guard let inner = element.array else {
                throw error(
                    key,
                    "expected an array of commands (each an array of strings), found a TOML \(element.type.rawValue) in it"
                )
            }
            var argv: [String] = []
            for part in inner {
                guard let string = part.string else {
                    throw error(
                        key, "expected each command as an array of strings, found a TOML \(part.type.rawValue) in one")
                }
                argv.append(string)
            }
            guard !argv.isEmpty else { throw error(key, "a command must not be empty") }
            commands.append(argv)
        }
        return commands
    }

    func table(_ key: String) throws(ImgBackupError) -> TableReader? {
        guard let value = value(key) else { return nil }
        guard let table = value.table else { throw typeError(key, expected: "a table", got: value) }
        return TableReader(table: table, keyPath: keyPath + [key], context: context)
    }

    func absolutePath(_ key: String) throws(ImgBackupError) -> String? {
        guard let path = try string(key) else { return nil }
        guard path.hasPrefix("/") else { throw error(key, "'\(path)' must be an absolute path") }
        guard !path.contains("\0") && !path.contains("\n") else { throw error(key, "must not contain NUL or newline") }
        return path
    }

    func size(_ key: String) throws(ImgBackupError) -> ByteSize? {
        guard let text = try string(key) else { return nil }
        guard let size = ByteSize(parsing: text) else {
            throw error(key, "'\(text)' is not a size (a number with K, M, G or T, e.g. \"50G\")")
        }
        return size
    }

    func duration(_ key: String) throws(ImgBackupError) -> Duration? {
        guard let text = try string(key) else { return nil }
        guard let duration = Duration(parsing: text), duration > .zero else {
            throw error(key, "'\(text)' is not a duration (a number with ms, s, m or h, e.g. \"120s\")")
        }
        return duration
    }

    func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ type: T.Type) throws(ImgBackupError) -> T?
    where T.RawValue == String {
        guard let text = try string(key) else { return nil }
        guard let value = T(rawValue: text) else {
            let allowed = T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            throw error(key, "'\(text)' is not one of \(allowed)")
        }
        return value
    }

    func require<T>(_ key: String, _ read: (String) throws(ImgBackupError) -> T?) throws(ImgBackupError) -> T {
        guard let value = try read(key) else { throw error(nil, "missing required key '\(key)'") }
        return value
    }

    func rejectUnknownKeys() throws(ImgBackupError) {
        if let unknown = keysInFileOrder.first(where: { !consumed.contains($0) }) {
            throw error(unknown, "unknown key")
        }
    }
}

/// Finds the line where a dotted key is defined. TOMLKit keeps no source
/// positions for values, so this reads the text: table headers
/// (`[target.offsite.copy]`) set the current table, `key = ...` lines define
/// keys in it. Dotted keys and inline tables fall back to the table's line.
struct LineLocator {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var current: [String] = []
        // By scalars, not Characters: "\r\n" is one Character, and a CRLF
        // file would otherwise be one long line.
        for (index, raw) in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = Self.trimmed(String(String.UnicodeScalarView(raw)), dropping: " \t\r")
            let number = index + 1
            if line.hasPrefix("[") {
                let inner = Self.trimmed(line, dropping: "[]").split(separator: "#").first.map(String.init) ?? ""
                current = Self.splitDotted(Self.trimmed(inner, dropping: "[] \t"))
                let joined = current.joined(separator: ".")
                for depth in 1...max(current.count, 1) where lines[current.prefix(depth).joined(separator: ".")] == nil
                {
                    lines[current.prefix(depth).joined(separator: ".")] = number
                }
                lines[joined] = lines[joined] ?? number
            } else if let equals = line.firstIndex(of: "="), !line.hasPrefix("#") {
                let key = Self.splitDotted(Self.trimmed(String(line[..<equals]), dropping: " \t"))
                guard !key.isEmpty else { continue }
                let full = (current + key).joined(separator: ".")
                lines[full] = lines[full] ?? number
            }
        }
    }

    /// `text` without leading and trailing scalars from `set`. (Foundation's
    /// trimmingCharacters crashed on some malformed input the fuzz test made.)
    static func trimmed(_ text: String, dropping set: String) -> String {
        let drop = Set(set.unicodeScalars)
        let scalars = text.unicodeScalars
        guard let first = scalars.firstIndex(where: { !drop.contains($0) }) else { return "" }
        let last = scalars.lastIndex(where: { !drop.contains($0) })!
        return String(String.UnicodeScalarView(scalars[first...last]))
    }

    func line(for keyPath: [String]) -> Int? {
        keyPath.isEmpty ? nil : lines[keyPath.joined(separator: ".")]
    }

    /// `a."b.c".d` -> ["a", "b.c", "d"].
    static func splitDotted(_ text: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character?
        for character in text {
            if let open = quote {
                if character == open { quote = nil } else { current.append(character) }
            } else if character == "\"" || character == "'" {
                quote = character
            } else if character == "." {
                parts.append(current.trimmingCharacters(in: .whitespaces))
                current = ""
            } else {
                current.append(character)
            }
        }
        parts.append(current.trimmingCharacters(in: .whitespaces))
        return parts.filter { !$0.isEmpty }
    }
}
