import Foundation
import ImgBackupOS

/// The image's sizes as the last trim or run measured them, kept under the
/// state directory (`RuntimePaths.imageMeasurement`) so `status` and the metrics can
/// show them while the target is closed.
public struct ImageMeasurement: Sendable {
    public let paths: RuntimePaths
    /// How long one look through the remote mount may take before the size
    /// counts as unknown (a frozen remote blocks stat forever).
    static let remoteLookDeadline: Duration = .seconds(3)

    public init(paths: RuntimePaths) { self.paths = paths }

    /// The sizes read through the image's transport among `layers`, if it
    /// is up: the NBD bridge knows the allocation; over sshfs (the remote
    /// directory's mount, never a source host's) only the apparent size.
    static func live(
        _ layers: [LayerRecord], target: Target, paths: RuntimePaths, source: TargetStatus.Image.Source = .live
    ) async
        -> TargetStatus.Image?
    {
        for layer in layers {
            guard let (transport, file) = layer.imageTransport(of: target, paths), layer.isUp == true else { continue }
            let apparent = try? await MountedRemoteFiles.size(file, deadline: remoteLookDeadline)
            var allocated: UInt64?
            // nbdkit's S3 plugin reports every block allocated: the bucket's
            // usage is a listing of its objects, which `trim` measures.
            if transport == .nbd {
                allocated = await NBDBridgeLayer.allocatedBytes(imageFile: file, deadline: remoteLookDeadline)
            }
            if apparent != nil || allocated != nil {
                return TargetStatus.Image(
                    apparentBytes: apparent, allocatedBytes: allocated, source: source, measuredAt: Date())
            }
        }
        return nil
    }

    func file(_ target: String) -> String { paths.imageMeasurement(target) }

    public func record(_ target: String, _ measurement: TargetStatus.Image) throws(ImgBackupError) {
        do {
            try LocalFiles.makeDirectories(paths.targetStateDirectory(target))
            let data = try RunHistory.encoder().encode(measurement)
            try LocalFiles.writeAtomically(file(target), String(decoding: data, as: UTF8.self) + "\n")
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "record the image size of \(target)")
        }
    }

    public func last(_ target: String) -> TargetStatus.Image? {
        guard let text = LocalFiles.contents(file(target)) else { return nil }
        return try? RunHistory.decoder().decode(TargetStatus.Image.self, from: Data(text.utf8))
    }
}
