import Foundation

/// A size in bytes, written in config as "50G", "512M", "1T" (binary units:
/// 1K = 1024) or a plain number of bytes.
public struct ByteSize: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    /// Parses "50G", "512MiB", "64m", "1048576". Nil for anything else.
    public init?(parsing text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let number = UInt64(digits) else { return nil }
        var unit = trimmed.dropFirst(digits.count).uppercased()
        if unit.hasSuffix("IB") {
            unit.removeLast(2)
        } else if unit.hasSuffix("B") && unit.count == 2 {
            unit.removeLast()
        }
        let shift: UInt64
        switch unit {
        case "", "B": shift = 0
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        case "T": shift = 40
        case "P": shift = 50
        default: return nil
        }
        let (value, overflow) = number.multipliedReportingOverflow(by: 1 << shift)
        guard !overflow else { return nil }
        bytes = value
    }

    public static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }

    /// "64 MiB", "1.5 GiB".
    public var description: String { Self.format(bytes) }

    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024 && index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[index])" : "\(rounded) \(units[index])"
    }
}
