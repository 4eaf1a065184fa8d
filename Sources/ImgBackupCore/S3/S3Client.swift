import Foundation
import ImgBackupOS

/// The few S3 requests imgbackup makes itself (the lock, the metadata
/// object, listing and deleting a prefix's objects), made with curl and its
/// SigV4 signing. The block objects themselves go through nbdkit's S3 plugin
/// in the NBD bridge. The access key reaches curl as a config on stdin.
///
/// Everything the store answers is untrusted: bodies are capped, only a few
/// XML elements are read, and what is shown of them is escaped.
public struct S3Client: Sendable {
    public let location: S3Location
    let credentials: S3Credentials
    let runner: any CommandRunning
    /// One request, connecting included: a store that does not answer
    /// within it is unreachable (the caller's hang deadline).
    let deadline: Duration

    public init(location: S3Location, credentials: S3Credentials, runner: any CommandRunning, deadline: Duration) {
        self.location = location
        self.credentials = credentials
        self.runner = runner
        self.deadline = deadline
    }

    /// The client for an s3 target, its credentials loaded; each request
    /// may take the target's stall timeout.
    public static func forTarget(_ target: Target, runner: any CommandRunning) async throws(ImgBackupError) -> S3Client
    {
        guard let location = target.s3 else {
            throw ImgBackupError(.config, "target '\(target.name)' has no [target.\(target.name).s3] table")
        }
        let credentials = try await S3Credentials.load(location, runner: runner)
        return S3Client(location: location, credentials: credentials, runner: runner, deadline: target.timeouts.stall)
    }

    /// What one request got back.
    struct Response {
        let status: Int
        let body: String
        /// The store's error code (`NoSuchKey`, `AccessDenied`), if it sent one.
        var errorCode: String? { S3XML.values(of: "Code", in: body).first }
        var errorMessage: String? { S3XML.values(of: "Message", in: body).first }
    }

    /// The object's text; nil when it does not exist.
    public func get(_ key: String, limit: Int = 64 << 10) async throws(ImgBackupError) -> String? {
        let response = try await request("GET", key: key, limit: limit)
        if response.status == 404 && response.errorCode != "NoSuchBucket" { return nil }
        try check(response, "read", key)
        return response.body
    }

    /// Writes the object. With `ifAbsent`, asks the store to refuse when it
    /// exists (`If-None-Match: *`) and returns false when it did; a store that
    /// ignores the condition overwrites (see `S3Lock` for what follows).
    @discardableResult
    public func put(_ key: String, _ body: String, ifAbsent: Bool = false) async throws(ImgBackupError) -> Bool {
        let response = try await request(
            "PUT", key: key, body: body, headers: ifAbsent ? ["If-None-Match: *"] : [])
        if ifAbsent && (response.status == 412 || response.errorCode == "PreconditionFailed") { return false }
        try check(response, "write", key)
        return true
    }

    /// Deletes the object; one that is not there counts as deleted.
    public func delete(_ key: String) async throws(ImgBackupError) {
        let response = try await request("DELETE", key: key)
        if response.status == 404 && response.errorCode != "NoSuchBucket" { return }
        try check(response, "delete", key)
    }

    /// One object under a prefix: its key and size in bytes.
    public struct Object: Sendable, Equatable {
        public let key: String
        public let size: UInt64
    }

    /// Every object whose key starts with `prefix`, in key order, page by
    /// page; with `onePage`, only the first page (is there any?).
    public func list(prefix: String, pageSize: Int? = nil, onePage: Bool = false) async throws(ImgBackupError)
        -> [Object]
    {
        var objects: [Object] = []
        var token: String?
        var pages = 0
        repeat {
            // A store that hands out new tokens forever must not keep us here:
            // 64 TiB of 64 KiB objects is a billion objects, a million pages.
            pages += 1
            guard pages <= Self.pageLimit else {
                throw ImgBackupError(
                    .remote,
                    "the S3 store's listing of \(location.bucket)/\(prefix) did not end after \(Self.pageLimit) pages")
            }
            // SigV4 signs the query in name order: keep these sorted.
            var query: [(String, String)] = []
            if let token { query.append(("continuation-token", token)) }
            query.append(("list-type", "2"))
            if let pageSize { query.append(("max-keys", String(pageSize))) }
            query.append(("prefix", prefix))
            let response = try await request("GET", key: nil, query: query, limit: 4 << 20)
            try check(response, "list", "\(prefix)*")
            let keys = S3XML.values(of: "Key", in: response.body)
            let sizes = S3XML.values(of: "Size", in: response.body).map { UInt64($0) }
            guard keys.count == sizes.count, !sizes.contains(nil), keys.allSatisfy({ $0.hasPrefix(prefix) }) else {
                throw ImgBackupError(
                    .remote, "the S3 store answered a listing of \(location.bucket)/\(prefix) that does not parse",
                    hint: "check that \(location.endpoint) is an S3 endpoint")
            }
            objects += zip(keys, sizes).map { Object(key: $0, size: $1!) }
            let truncated = S3XML.values(of: "IsTruncated", in: response.body).first == "true"
            let next = S3XML.values(of: "NextContinuationToken", in: response.body).first
            // A store that says "more" without saying where from, or twice
            // from the same place, would loop forever.
            guard truncated, !onePage, let next, !next.isEmpty, next != token else { break }
            token = next
        } while true
        return objects
    }

    /// Whether the bucket answers with these credentials (HEAD bucket).
    public func checkBucket() async throws(ImgBackupError) {
        let response = try await request("HEAD", key: nil)
        if response.status == 404 {
            throw ImgBackupError(
                .remote, "the S3 bucket '\(location.bucket)' does not exist at \(location.endpoint)",
                hint: "create it, or fix bucket in [s3]")
        }
        try check(response, "reach", "the bucket")
    }

    // MARK: - the request itself

    func url(key: String?, query: [(String, String)] = []) -> String {
        let endpoint = S3Location.parseEndpoint(location.endpoint)!
        let port = endpoint.port.map { ":\($0)" } ?? ""
        var url: String
        switch location.addressing {
        case .path: url = "\(endpoint.scheme)://\(endpoint.host)\(port)/\(location.bucket)"
        case .virtual: url = "\(endpoint.scheme)://\(location.bucket).\(endpoint.host)\(port)"
        }
        if let key {
            url +=
                "/"
                + key.split(separator: "/", omittingEmptySubsequences: false).map { Self.encode(String($0)) }
                .joined(separator: "/")
        } else if location.addressing == .virtual {
            url += "/"
        }
        if !query.isEmpty { url += "?" + query.map { "\($0)=\(Self.encode($1))" }.joined(separator: "&") }
        return url
    }

    /// RFC 3986 unreserved characters stay, everything else is %XX: the
    /// encoding SigV4's canonical request uses.
    static func encode(_ text: String) -> String {
        var encoded = ""
        for byte in text.utf8 {
            let scalar = Unicode.Scalar(byte)
            if byte < 0x80 && (CharacterSet.alphanumerics.contains(scalar) || "-._~".unicodeScalars.contains(scalar)) {
                encoded.unicodeScalars.append(scalar)
            } else {
                encoded += String(format: "%%%02X", byte)
            }
        }
        return encoded
    }

    /// curl's config: the key, the body and the headers, none of them on
    /// its command line. Strings are quoted with curl's escapes.
    func curlConfig(body: String?, headers: [String]) -> SecureBytes {
        func quoted(_ text: String) -> String {
            "\""
                + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                .replacingOccurrences(of: "\n", with: "\\n") + "\""
        }
        var lines = ["user = \(quoted("\(credentials.accessKeyID):\(credentials.secretAccessKey)"))"]
        if let token = credentials.sessionToken { lines.append("header = \(quoted("x-amz-security-token: \(token)"))") }
        for header in headers { lines.append("header = \(quoted(header))") }
        if let body {
            // curl signs no payload hash of its own for a body: say it is unsigned.
            lines.append("header = \(quoted("x-amz-content-sha256: UNSIGNED-PAYLOAD"))")
            lines.append("data-binary = \(quoted(body))")
        }
        var bytes = Array((lines.joined(separator: "\n") + "\n").utf8)
        return SecureBytes(consuming: &bytes)
    }

    static let statusMarker = "\nimgbackup-http-status:"
    static let pageLimit = 1_000_000
    /// What of the store's own words (its error code, its message) an error
    /// line quotes: a store may send a message of any length.
    static let saidLimit = 200

    func request(
        _ method: String, key: String?, query: [(String, String)] = [], body: String? = nil, headers: [String] = [],
        limit: Int = 64 << 10
    ) async throws(ImgBackupError) -> Response {
        let seconds = max(1, Int(deadline.components.seconds))
        var arguments = [
            "--silent", "--show-error", "--globoff", "--proto", "=http,https", "--config", "-",
            "--aws-sigv4", "aws:amz:\(location.region):s3", "--request", method,
            "--connect-timeout", String(min(seconds, 30)), "--max-time", String(seconds),
            "--write-out", "\(Self.statusMarker)%{http_code}",
        ]
        if method == "HEAD" { arguments.append("--head") }
        arguments.append(url(key: key, query: query))
        var command = Command("curl", arguments, timeout: deadline + .seconds(5), outputLimit: limit + 4096)
        command.input = .secret(curlConfig(body: body, headers: headers))
        let result: CommandResult
        do {
            result = try await runner.run(command)
        } catch {
            throw ImgBackupError.wrapping(
                error, .remote, failedTo: "reach the S3 endpoint \(location.endpoint)", hint: "apt-get install curl")
        }
        guard result.succeeded, let marker = result.standardOutput.range(of: Self.statusMarker, options: .backwards),
            let status = Int(result.standardOutput[marker.upperBound...].trimmingCharacters(in: .whitespaces))
        else {
            // curl's exit 28: no answer within --max-time.
            let reason =
                result.termination == .exited(28)
                ? "no answer within \(deadline.secondsText)"
                : result.standardError.split(whereSeparator: \.isNewline).last.map {
                    String($0).escapingControlCharacters.clipped(to: Self.saidLimit)
                } ?? result.failureSummary
            throw ImgBackupError(
                .remote, "failed to reach the S3 endpoint \(location.endpoint): \(reason)",
                hint: "check endpoint in [s3] and that the store is up")
        }
        return Response(status: status, body: String(result.standardOutput[..<marker.lowerBound]))
    }

    /// Anything but 2xx, as one line naming the object and what the store said.
    func check(_ response: Response, _ verb: String, _ key: String) throws(ImgBackupError) {
        guard !(200..<300).contains(response.status) else { return }
        let said = [response.errorCode, response.errorMessage].compactMap {
            $0?.escapingControlCharacters.clipped(to: Self.saidLimit)
        }
        let what = "\(response.status)\(said.isEmpty ? "" : " " + said.joined(separator: ": "))"
        let object = "\(location.bucket)/\(key)"
        switch (response.status, response.errorCode) {
        case (404, "NoSuchBucket"?):
            throw ImgBackupError(
                .remote, "the S3 bucket '\(location.bucket)' does not exist at \(location.endpoint)",
                hint: "create it, or fix bucket in [s3]")
        case (401, _), (403, _):
            throw ImgBackupError(
                .remote, "the S3 store refused to \(verb) \(object): \(what)",
                hint: "check the credentials, region and the bucket's policy")
        default:
            throw ImgBackupError(.remote, "failed to \(verb) \(object) in S3: the store answered \(what)")
        }
    }
}

/// The few XML elements imgbackup reads from S3's answers, found by plain
/// scanning: no entity expansion beyond the five predefined ones, no DTDs.
enum S3XML {
    static func values(of element: String, in xml: String) -> [String] {
        var values: [String] = []
        var rest = xml[...]
        let open = "<\(element)>"
        let close = "</\(element)>"
        while let start = rest.range(of: open), let end = rest[start.upperBound...].range(of: close) {
            values.append(unescape(String(rest[start.upperBound..<end.lowerBound])))
            rest = rest[end.upperBound...]
        }
        return values
    }

    static func unescape(_ text: String) -> String {
        guard text.contains("&") else { return text }
        return text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}
