import ImgBackupOS

/// A new image file that `init` is still building. If `init` does not get to
/// the end, unwinding removes it, so a failed init leaves nothing on the
/// remote. `init` renames it into place once it is complete; the file is then
/// gone from this path and the layer's `down` finds nothing to remove.
public struct PartialImageLayer: Layer {
    public let path: String
    public let size: ByteSize
    public let deadline: Duration

    public var intent: LayerRecord { .partialImage(path: path) }

    public func up() async throws -> LayerRecord {
        do {
            try await RemoteFiles.createSparse(path, size: size.bytes, deadline: deadline)
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "create the sparse image \(path)")
        }
        return intent
    }
}
