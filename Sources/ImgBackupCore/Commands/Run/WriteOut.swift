import ImgBackupOS

/// The run's write-out to the remote: syncfs through a watch opened when the
/// image was mounted, so a write-back that failed at any point of the run is
/// reported, and remembered for the error message and the dirty marker.
final class WriteOut: Sendable {
    private let mountPoint: String
    /// nil only if the mount point could not be opened; each flush then opens its own.
    private let watch: WriteBackWatch?
    /// A write-out failed: the remote did not get everything.
    let failed = Latch()

    /// The longest a flush may take: a large copy over a slow link can leave
    /// gigabytes in the page cache.
    static let limit: Duration = .seconds(6 * 3600)

    init(mountPoint: String) {
        self.mountPoint = mountPoint
        watch = try? WriteBackWatch(mountPoint: mountPoint)
    }

    /// Lets go of the mount (before it is unmounted).
    func release() { watch?.release() }

    func flush() async throws(ImgBackupError) {
        do {
            if let watch {
                try await watch.sync(deadline: Self.limit)
            } else {
                try await Mounts.sync(mountPoint, deadline: Self.limit)
            }
        } catch {
            failed.set()
            throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "write the backup out to the remote")
        }
    }
}
