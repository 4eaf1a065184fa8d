/// The one string ssh hands the remote's shell for a command: every word
/// quoted. The NBD bridge sends this for the export's command, and the
/// forced command of `authorized-keys` matches it exactly.
public enum RemoteCommandLine {
    public static func of(_ command: [String]) -> String {
        command.map(shellQuoted).joined(separator: " ")
    }

    static func shellQuoted(_ word: String) -> String {
        "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
