extension String {
    /// The text with every control, line-separating and invisible formatting
    /// character written as an escape (`\n`, `\u{1b}`, `\u{202e}`): safe to
    /// print on one line of a terminal or journal whatever the remote, a
    /// config file or a tool's stderr put in it.
    public var escapingControlCharacters: String {
        var escaped = ""
        for scalar in unicodeScalars {
            switch scalar {
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            case _
            where [.control, .lineSeparator, .paragraphSeparator, .format].contains(scalar.properties.generalCategory):
                escaped += "\\u{\(String(scalar.value, radix: 16))}"
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }
}
