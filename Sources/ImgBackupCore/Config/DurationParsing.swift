import Foundation

extension Duration {
    /// Parses "120s", "2m", "1h", "500ms" (a bare number is seconds).
    public init?(parsing text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let number = Int64(digits), number <= 1_000_000_000 else { return nil }
        switch trimmed.dropFirst(digits.count).lowercased() {
        case "ms": self = .milliseconds(number)
        case "", "s": self = .seconds(number)
        case "m", "min": self = .seconds(number * 60)
        case "h": self = .seconds(number * 3600)
        default: return nil
        }
    }
}
