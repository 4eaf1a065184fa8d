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
            try await MountedRemoteFiles.createSparse(path, size: size.bytes, deadline: deadline)
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "create the sparse image \(path)")
        }
        return intent
    }
}

extension PartialImageLayer {
    static let kind = "image"

    static func describe(path: String) -> String { "partial image \(path)" }

    static func down(path: String, force: Bool, in context: TeardownContext) async throws {
        do {
            try await MountedRemoteFiles.remove(path, deadline: context.stepDeadline)
        } catch  where force {
            // After a hang the remote cannot be reached. The half-made
            // image never had the real name, and the next init removes it.
            context.logger.notice("could not remove the unfinished image \(path) (\(error)): the next init removes it")
        }
    }
}
