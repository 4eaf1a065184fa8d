import Foundation

/// `[target.NAME.s3]`: an image kept in an S3 bucket as fixed-size objects
/// (`PREFIX/%016x`, nbdkit's S3 layout), beside two small objects of ours:
/// `PREFIX.imgbackup` (the image's size and object size; written last by
/// `init`, so it says the image is complete) and `PREFIX.lock`.
public struct S3Location: Sendable, Equatable {
    /// Path-style URLs (`ENDPOINT/BUCKET/KEY`) work with every store;
    /// virtual-hosted ones (`BUCKET.HOST/KEY`) are what AWS recommends.
    public enum Addressing: String, Sendable, CaseIterable { case path, virtual }

    /// Where the access key comes from: an AWS shared-credentials file
    /// (mode 0600), or a command printing one. Never argv, never a log.
    public enum Credentials: Sendable, Equatable {
        case file(String)
        case command([String])
    }

    /// `http://` or `https://` with a host and optional port, no path.
    public var endpoint: String
    public var bucket: String
    public var prefix: String
    /// nil: `defaultObjectSize`. Fixed when the image is made (`init` records
    /// it in the metadata object; later opens use what is recorded).
    public var objectSize: ByteSize?
    public var region = "us-east-1"
    public var addressing: Addressing = .path
    public var credentials: Credentials
    /// The section of the credentials to use.
    public var profile = "default"

    /// Chosen by `make bench-s3` (docs/benchmarks.md): a third of 1 MiB's
    /// bytes on the wire for an incremental run (36 MiB against 117 MiB),
    /// and the fastest first run at 20 and 100 ms round trips, where 128 KiB
    /// objects save bytes but each extra request waits a round trip.
    public static let defaultObjectSize = ByteSize(bytes: 256 << 10)

    public init(endpoint: String, bucket: String, prefix: String, credentials: Credentials) {
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.credentials = credentials
    }

    public var metadataKey: String { "\(prefix).imgbackup" }
    public var lockKey: String { "\(prefix).lock" }
    /// Written first by `init` and removed last: objects under the prefix
    /// with this marker are an init that did not finish.
    public var partialKey: String { "\(prefix).imgbackup-partial" }
    /// Every block object's key starts with it.
    public var objectPrefix: String { "\(prefix)/" }

    /// `s3://bucket/prefix`, for messages.
    public var description: String { "s3://\(bucket)/\(prefix)" }

    /// The endpoint's scheme, host and port; nil when it is not an
    /// http(s) URL with a host and nothing after it but a "/".
    public static func parseEndpoint(_ text: String) -> (scheme: String, host: String, port: Int?)? {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty,
            components.path.isEmpty || components.path == "/", components.query == nil, components.user == nil,
            components.password == nil, components.fragment == nil
        else { return nil }
        return (scheme, host, components.port)
    }

    /// S3's bucket naming rules: 3-63 of lowercase letters, digits, '.' and
    /// '-', starting and ending with a letter or digit.
    public static func isValidBucket(_ name: String) -> Bool {
        let allowed = name.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "." || $0 == "-" }
        return (3...63).contains(name.count) && allowed && name.first!.isLetterOrDigit && name.last!.isLetterOrDigit
    }

    /// Plain key segments: letters, digits, '.', '_', '-', separated by
    /// single '/'; no segment of dots only.
    public static func isValidPrefix(_ prefix: String) -> Bool {
        guard !prefix.isEmpty, prefix.count <= 512 else { return false }
        let segments = prefix.split(separator: "/", omittingEmptySubsequences: false)
        return segments.allSatisfy { segment in
            !segment.isEmpty && !segment.allSatisfy { $0 == "." }
                && segment.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
        }
    }

    /// An object size nbdkit's S3 layout and the kernel both take: a power
    /// of two from 64 KiB to 64 MiB.
    public static func isValidObjectSize(_ size: ByteSize) -> Bool {
        size.bytes >= 64 << 10 && size.bytes <= 64 << 20 && size.bytes & (size.bytes - 1) == 0
    }
}

extension Character {
    fileprivate var isLetterOrDigit: Bool { isASCII && (isLetter || isNumber) }
}
