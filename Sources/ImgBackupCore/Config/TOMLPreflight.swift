/// Refuses the malformed TOML that the parser underneath (toml++ 3.4 in
/// TOMLKit) does not report but asserts on, aborting the process in a debug
/// build and reaching undefined behaviour in a release build. Each rule
/// here was found by ConfigFuzzTests and only rejects text that is not
/// valid TOML anyway; everything else is left to the parser's own errors.
enum TOMLPreflight {
    struct Problem: Equatable {
        let line: Int
        let reason: String
    }

    static func firstProblem(in text: String) -> Problem? {
        scan(text)
    }

    private static func isBareKeyScalar(_ scalar: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) || scalar == "_"
            || scalar == "-"
    }

    /// Two rules, strings and comments skipped:
    /// - `[=target.x]`, `[{a]`: a table header (a `[` opening a line outside
    ///   any array or inline table) whose name starts with neither a bare
    ///   key character nor a quote;
    /// - `key = }`, `[}"a"]`, `[1,,2]`: a `}` or `,` where `=`, `[` or `,`
    ///   asked for a value.
    private static func scan(_ text: String) -> Problem? {
        let scalars = Array(text.unicodeScalars)
        var line = 1
        var index = 0
        var wantsValue = false
        var tableHeader = false  // inside `[name]` / `[[name]]`
        var atLineStart = true
        var nesting = 0  // open arrays and inline tables of values
        func starts(_ token: String, at position: Int) -> Bool {
            let token = Array(token.unicodeScalars)
            return position + token.count <= scalars.count && Array(scalars[position..<position + token.count]) == token
        }
        /// Skips a string opened at `index`; returns false when it never closes.
        func skipString() -> Bool {
            let quote = scalars[index]
            let multiLine = starts(String(repeating: String(quote), count: 3), at: index)
            let closing = multiLine ? String(repeating: String(quote), count: 3) : String(quote)
            index += multiLine ? 3 : 1
            while index < scalars.count {
                if scalars[index] == "\n" {
                    if !multiLine { return true }  // the parser reports the unterminated string
                    line += 1
                } else if quote == "\"" && scalars[index] == "\\" {
                    index += 2
                    continue
                } else if starts(closing, at: index) {
                    index += closing.unicodeScalars.count
                    return true
                }
                index += 1
            }
            return false
        }
        while index < scalars.count {
            let scalar = scalars[index]
            switch scalar {
            case "\n":
                line += 1
                atLineStart = true
                tableHeader = false
                index += 1
                continue
            case " ", "\t", "\r":
                index += 1
                continue
            case "#":
                while index < scalars.count && scalars[index] != "\n" { index += 1 }
                continue
            case "\"", "'":
                if !skipString() { return nil }
                wantsValue = false
                atLineStart = false
                continue
            case "}", ",":
                if wantsValue && !tableHeader {
                    return Problem(line: line, reason: "expected a value before '\(scalar)'")
                }
                wantsValue = scalar == ","
                if scalar == "}" { nesting = max(0, nesting - 1) }
            case "=":
                wantsValue = true
            case "{":
                nesting += 1
                wantsValue = false
            case "]":
                if tableHeader { tableHeader = false } else { nesting = max(0, nesting - 1) }
                wantsValue = false
            case "[" where atLineStart && nesting == 0:
                tableHeader = true
                var name = index + 1
                if name < scalars.count && scalars[name] == "[" { name += 1 }  // [[array of tables]]
                while name < scalars.count && (scalars[name] == " " || scalars[name] == "\t") { name += 1 }
                if name >= scalars.count
                    || !(isBareKeyScalar(scalars[name]) || scalars[name] == "\"" || scalars[name] == "'")
                {
                    return Problem(line: line, reason: "'[' must be followed by a table name")
                }
                wantsValue = false
            case "[":
                if !tableHeader { nesting += 1 }
                wantsValue = !tableHeader
            default:
                wantsValue = false
            }
            atLineStart = false
            index += 1
        }
        return nil
    }
}
