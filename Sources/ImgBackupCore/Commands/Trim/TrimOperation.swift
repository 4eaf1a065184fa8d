import Foundation
import ImgBackupOS
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// `imgbackup trim`: open over NBD with discards, fstrim, close; report what
/// fstrim freed and the remote image's allocated bytes before and after,
/// measured over NBD block status (du through sshfs lies for sparse files).
public struct TrimOperation {
    public let target: Target
    public let environment: OperationEnvironment

    public struct Report: Sendable {
        public let trimmedBytes: UInt64?
        public let allocatedBefore: UInt64?
        public let allocatedAfter: UInt64?
    }

    public init(target: Target, environment: OperationEnvironment) {
        var nbdTarget = target
        // sshfs cannot trim; an S3 image is already served over NBD.
        if target.transport == .sshfs { nbdTarget.transport = .nbd }
        self.target = nbdTarget
        self.environment = environment
    }

    public func run() async throws(ImgBackupError) -> Report {
        let open = OpenOperation(target: target, environment: environment, allowDiscards: true, requireTrim: true)
        let (target, environment) = (target, environment)
        let held = try await open.withOpenTarget(
            operation: .trim, key: { () async throws(ImgBackupError) in try await environment.key(for: target) }
        ) { session throws(ImgBackupError) -> Report in
            try await trim(session)
        }
        guard let report = held.value, held.failure == nil else {
            throw held.failure ?? ImgBackupError(.system, "failed to trim '\(target.name)'")
        }
        return report
    }

    /// fstrim on the open target, under the hang watchdog: a server that
    /// freezes meanwhile is a hang like any other (exit 3, torn down with force).
    private func trim(_ session: OpenSession) async throws(ImgBackupError) -> Report {
        let mountPoint = session.mountPoint
        let image = NBDBridgeLayer.imageFile(mountPoint: environment.paths.nbdMount(target.name))
        let before = await allocated(image)
        let runner = environment.runner
        let progress = JournalProgress.start(
            "trim of '\(target.name)'", device: "/dev/mapper/\(target.mappingName)", environment: environment)
        defer { progress.stop() }
        switch await HangGuard(target: target, environment: environment, step: "the trim").run({
            () async throws(ImgBackupError) -> CommandResult in
            do {
                return try await runner.run(Command("fstrim", ["-v", mountPoint], timeout: .seconds(24 * 3600)))
            } catch {
                throw ImgBackupError.wrapping(error, .system, failedTo: "run fstrim on \(mountPoint)")
            }
        }) {
        case .finished(.success(let result)) where result.succeeded:
            let after = await allocated(image)
            // For `status` while the target is closed. Best effort: the trim itself worked.
            let apparent = try? await MountedRemoteFiles.size(image, deadline: Deadlines(target).remoteCall)
            if apparent != nil || after != nil {
                try? ImageMeasurement(paths: environment.paths).record(
                    target.name,
                    TargetStatus.Image(
                        apparentBytes: apparent, allocatedBytes: after, source: .trim, measuredAt: Date()))
            }
            return Report(
                trimmedBytes: Self.trimmedBytes(fromFstrim: result.standardOutput), allocatedBefore: before,
                allocatedAfter: after)
        case .finished(.success(let result)):
            throw ImgBackupError(.system, "failed to trim \(mountPoint): \(result.failureSummary)")
        case .finished(.failure(let error)):
            throw error
        case .hung(let error, _):
            session.hung.set()
            throw error
        }
    }

    /// The remote's allocated bytes, from the bridge (nil if the server
    /// cannot tell); for S3 the bytes of the image's objects, from a listing.
    private func allocated(_ image: String) async -> UInt64? {
        if target.transport == .s3 {
            do {
                return try await S3Client.forTarget(target, runner: environment.runner).usage().bytes
            } catch {
                environment.logger.notice("could not measure the bucket's usage: \(error.message)")
                return nil
            }
        }
        return await NBDBridgeLayer.allocatedBytes(imageFile: image, deadline: Deadlines(target).remoteCall)
    }

    /// "/mnt/x: 48 MiB (50331648 bytes) trimmed" -> 50331648.
    static func trimmedBytes(fromFstrim output: String) -> UInt64? {
        guard let open = output.range(of: "("),
            let close = output.range(of: " bytes)", range: open.upperBound..<output.endIndex)
        else { return nil }
        return UInt64(output[open.upperBound..<close.lowerBound])
    }
}
