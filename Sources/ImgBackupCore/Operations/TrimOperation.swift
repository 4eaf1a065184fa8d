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
        nbdTarget.transport = .nbd
        self.target = nbdTarget
        self.environment = environment
    }

    public func run() async throws(ImgBackupError) -> Report {
        let mountPoint = try await OpenOperation(
            target: target, environment: environment, allowDiscards: true, requireTrim: true
        ).run()
        let image = "\(environment.paths.nbdMount(target.name))/\(ImageFileSystem.fileName)"
        var report: Report?
        var failure: ImgBackupError?
        do {
            let before = await allocated(image)
            let result = try await environment.runner.run(
                Command("fstrim", ["-v", mountPoint], timeout: .seconds(24 * 3600)))
            guard result.succeeded else {
                throw ImgBackupError(.system, "failed to trim \(mountPoint): \(result.failureSummary)")
            }
            let after = await allocated(image)
            report = Report(
                trimmedBytes: Self.trimmedBytes(fromFstrim: result.standardOutput), allocatedBefore: before,
                allocatedAfter: after)
        } catch {
            failure = ImgBackupError.wrapping(error, .system, failedTo: "trim \(target.name)")
        }
        // Always close, also when fstrim failed.
        do {
            _ = try await CloseOperation(target: target, environment: environment).run()
        } catch {
            throw failure ?? error
        }
        if let failure { throw failure }
        return report!
    }

    /// The remote's allocated bytes, from the bridge (nil if the server cannot tell).
    private func allocated(_ image: String) async -> UInt64? {
        try? await withAbandonableDeadline(target.timeouts.stall, operation: "measure the remote allocation") {
            ExtendedAttribute.value(of: image, name: ImageFileSystem.allocatedAttribute).flatMap { UInt64($0) }
        }
    }

    /// "/mnt/x: 48 MiB (50331648 bytes) trimmed" -> 50331648.
    static func trimmedBytes(fromFstrim output: String) -> UInt64? {
        guard let open = output.range(of: "("), let close = output.range(of: " bytes)", range: open.upperBound..<output.endIndex)
        else { return nil }
        return UInt64(output[open.upperBound..<close.lowerBound])
    }
}
