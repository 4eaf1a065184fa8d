/// One entry of `[copy] sources`: a path on this machine, or a path on
/// another host, `ssh://[user@]host[:port]/path`, which a run mounts
/// read-only over sshfs and copies from (a pull backup: the server holds no
/// credentials for the backup storage).
public enum CopySource: Sendable, Equatable {
    case local(String)
    case remote(SourceHost, path: String)

    /// A failure with the reason when `text` is neither an absolute path nor an ssh:// URL.
    public static func parse(_ text: String) -> Result<CopySource, RemoteLocation.ParseFailure> {
        guard text.hasPrefix("ssh://") else {
            guard text.hasPrefix("/") else {
                return .failure(.init("'\(text)' must be an absolute path or ssh://[user@]host[:port]/path"))
            }
            return .success(.local(text))
        }
        let rest = text.dropFirst("ssh://".count)
        guard let slash = rest.firstIndex(of: "/") else {
            return .failure(.init("'\(text)' has no path: ssh://[user@]host[:port]/path"))
        }
        let path = String(rest[slash...])
        var authority = rest[..<slash]
        var user: String?
        if let at = authority.lastIndex(of: "@") {
            user = String(authority[..<at])
            authority = authority[authority.index(after: at)...]
            guard let user, !user.isEmpty, !user.hasPrefix("-"), !user.contains(where: { $0.isWhitespace || $0 == ":" })
            else {
                return .failure(.init("'\(text)' has no usable user before '@'"))
            }
        }
        var host = authority
        var port = 22
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                return .failure(.init("'\(text)': '[' without ']'"))
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let number = Int(after.dropFirst()) else {
                    return .failure(.init("'\(text)': expected :PORT after ']'"))
                }
                port = number
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            guard let number = Int(authority[authority.index(after: colon)...]) else {
                return .failure(.init("'\(text)': the port is not a number"))
            }
            port = number
        }
        guard (1...65535).contains(port) else {
            return .failure(.init("'\(text)': \(port) is not a TCP port (1-65535)"))
        }
        guard !host.isEmpty, !host.hasPrefix("-"), !host.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "@" })
        else {
            return .failure(.init("'\(text)' has no usable host name"))
        }
        guard !path.contains("\0"), !path.contains("\n") else {
            return .failure(.init("'\(text)': the path must not contain NUL or newline"))
        }
        return .success(.remote(SourceHost(user: user, host: String(host), port: port), path: path))
    }
}

/// A host sources are pulled from: one read-only sshfs mount of its `/` per run.
public struct SourceHost: Sendable, Hashable {
    public let user: String?
    public let host: String
    public let port: Int

    public init(user: String?, host: String, port: Int = 22) {
        self.user = user
        self.host = host
        self.port = port
    }

    /// Its whole tree, for sshfs; sources are paths inside it.
    public var location: RemoteLocation { RemoteLocation(user: user, host: host, directory: "/") }

    /// Under which name its files appear: the mount point's last component,
    /// and so the directory the pulled paths land in within a backup point.
    public var directoryName: String { host }
}

extension Target.Copy {
    public var parsedSources: [CopySource] {
        sources.compactMap { try? CopySource.parse($0).get() }
    }

    /// The hosts sources are pulled from, in order of first mention.
    /// The paths of the ssh:// sources, on whichever host: what the source
    /// hosts' sandbox (authorized-keys --source) binds.
    public var sourcePaths: [String] {
        var paths: [String] = []
        for case .remote(_, let path) in parsedSources where !paths.contains(path) { paths.append(path) }
        return paths
    }

    public var sourceHosts: [SourceHost] {
        var hosts: [SourceHost] = []
        for case .remote(let host, _) in parsedSources where !hosts.contains(host) { hosts.append(host) }
        return hosts
    }
}
