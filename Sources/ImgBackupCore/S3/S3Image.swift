import Foundation
import ImgBackupOS

/// What `PREFIX.imgbackup` says: the image's size and its object size. The
/// store could change it: a smaller size fails the filesystem's own check
/// at mount, another object size scrambles the blocks and the LUKS header
/// pin refuses them.
public struct S3ImageMetadata: Sendable, Equatable {
    public var size: UInt64
    public var objectSize: UInt64

    public init(size: UInt64, objectSize: UInt64) {
        self.size = size
        self.objectSize = objectSize
    }

    static let firstLine = "imgbackup-s3-image 1"

    var text: String { "\(Self.firstLine)\nsize=\(size)\nobject_size=\(objectSize)\n" }

    static func parse(_ text: String) -> S3ImageMetadata? {
        let lines = text.split(whereSeparator: \.isNewline).map(String.init)
        guard lines.first == firstLine else { return nil }
        var fields: [String: UInt64] = [:]
        for line in lines.dropFirst() {
            guard let equals = line.firstIndex(of: "=") else { return nil }
            fields[String(line[..<equals])] = UInt64(line[line.index(after: equals)...])
        }
        guard let size = fields["size"], let objectSize = fields["object_size"],
            S3Location.isValidObjectSize(ByteSize(bytes: objectSize)), size >= 32 << 20, size % objectSize == 0
        else { return nil }
        return S3ImageMetadata(size: size, objectSize: objectSize)
    }
}

extension S3Client {
    /// The image's metadata; nil when there is no image under the prefix.
    public func readMetadata() async throws(ImgBackupError) -> S3ImageMetadata? {
        guard let text = try await get(location.metadataKey) else { return nil }
        guard let metadata = S3ImageMetadata.parse(text) else {
            throw ImgBackupError(
                .remote,
                "refusing to use \(location.description): its metadata object \(location.metadataKey) is not imgbackup's",
                hint: "it should hold the image's size and object size; restore it, or check the prefix")
        }
        return metadata
    }

    public func writeMetadata(_ metadata: S3ImageMetadata) async throws(ImgBackupError) {
        try await put(location.metadataKey, metadata.text)
    }

    /// The metadata, or a clear line when there is no image.
    public func requireMetadata() async throws(ImgBackupError) -> S3ImageMetadata {
        guard let metadata = try await readMetadata() else {
            throw ImgBackupError(
                .remote, "there is no image at \(location.description) (no \(location.metadataKey) object)",
                hint: "run 'imgbackup init' to make one, or check bucket and prefix in [s3]")
        }
        return metadata
    }

    /// How many block objects the image has and the bytes they hold: what
    /// the store bills for.
    public func usage() async throws(ImgBackupError) -> (objects: Int, bytes: UInt64) {
        let objects = try await list(prefix: location.objectPrefix)
        return (objects.count, objects.reduce(0) { $0 + $1.size })
    }

    /// Deletes every block object of the image, one request each (a bulk
    /// delete needs a Content-MD5 curl cannot sign here). For an `init`
    /// that did not finish.
    public func deleteObjects() async throws(ImgBackupError) -> Int {
        let objects = try await list(prefix: location.objectPrefix)
        for object in objects { try await delete(object.key) }
        return objects.count
    }
}

/// The lock object `PREFIX.lock`. Taking it: read it (someone holds it),
/// then create it with `If-None-Match: *` (AWS S3, MinIO and Ceph RGW
/// refuse a second create), then read it back: a store that ignores the
/// condition shows a racing client's lock there instead of ours, and the
/// loser backs off. What is left on such a store: two clients whose reads
/// both found no lock within one request's time of each other can both
/// believe they hold it. docs/usage.md, "The remote lock".
public struct S3LockObject: RemoteLockStore {
    public let client: S3Client

    public init(client: S3Client) { self.client = client }

    public var name: String { "s3://\(client.location.bucket)/\(client.location.lockKey)" }

    public func read() async throws -> String? { try await client.get(client.location.lockKey) }

    public func createExclusive(_ contents: String) async throws -> Bool {
        let key = client.location.lockKey
        if try await client.get(key) != nil { return false }
        guard try await client.put(key, contents, ifAbsent: true) else { return false }
        return try await client.get(key) == contents
    }

    public func remove() async throws { try await client.delete(client.location.lockKey) }
}
