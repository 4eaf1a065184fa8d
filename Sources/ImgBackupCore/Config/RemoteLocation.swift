/// Where the images live: `[user@]host:/absolute/directory`, as for scp and
/// sshfs. IPv6 hosts go in brackets: `backup@[2001:db8::1]:/srv/backups`.
public struct RemoteLocation: Sendable, Hashable, CustomStringConvertible {
    public let user: String?
    public let host: String
    public let directory: String

    public init(user: String?, host: String, directory: String) {
        self.user = user
        self.host = host
        self.directory = directory
    }

    /// Nil with a reason when `text` is not of that form.
    public static func parse(_ text: String) -> Result<RemoteLocation, ParseFailure> {
        var rest = Substring(text)
        var user: String?
        if let at = rest.firstIndex(of: "@"), !rest[..<at].contains(":") {
            user = String(rest[..<at])
            rest = rest[rest.index(after: at)...]
            if user!.isEmpty { return .failure(ParseFailure("the user before '@' is empty")) }
        }
        let host: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return .failure(ParseFailure("'[' without ']'")) }
            host = rest[rest.index(after: rest.startIndex)..<close]
            rest = rest[rest.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(ParseFailure("expected ':' after the host")) }
        } else {
            guard let colon = rest.firstIndex(of: ":") else {
                return .failure(ParseFailure("expected host:/directory"))
            }
            host = rest[..<colon]
            rest = rest[colon...]
        }
        let directory = String(rest.dropFirst())
        guard !host.isEmpty else { return .failure(ParseFailure("the host is empty")) }
        guard !host.contains(where: { $0.isWhitespace || $0 == "/" }), !host.hasPrefix("-") else {
            return .failure(ParseFailure("'\(host)' is not a host name"))
        }
        guard directory.hasPrefix("/") else {
            return .failure(ParseFailure("the directory must be an absolute path (host:/srv/backups)"))
        }
        if let user, user.hasPrefix("-") || user.contains(where: \.isWhitespace) {
            return .failure(ParseFailure("'\(user)' is not a user name"))
        }
        return .success(RemoteLocation(user: user, host: String(host), directory: directory))
    }

    public struct ParseFailure: Error, Sendable {
        public let reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// `user@host` for ssh.
    public var sshDestination: String {
        let bracketed = host.contains(":") ? "[\(host)]" : host
        return user.map { "\($0)@\(bracketed)" } ?? bracketed
    }

    /// `user@host:/dir` for sshfs.
    public var sshfsSource: String { "\(sshDestination):\(directory)" }

    public var description: String { sshfsSource }
}
