import ImgBackupOS

/// The free space of the remote filesystem under the image, where the
/// transport can tell: SFTP statvfs through the sshfs mount, where the
/// server has it. (An NBD export is a fixed-size device; its server's disk
/// is out of sight.)
struct RemoteFreeSpace: Sendable {
    let target: Target
    let environment: OperationEnvironment

    /// Less free than this and a sparse image that still grows gets write
    /// errors: the remote counts as full.
    static let nearlyFull: UInt64 = 16 << 20
    /// How long the remote may take to answer: it may be the reason writes failed.
    static let answerDeadline: Duration = .seconds(10)

    /// Free bytes in the remote directory; nil when the transport cannot
    /// tell or the remote does not answer.
    func available() async -> UInt64? {
        guard target.transport == .sshfs else { return nil }
        let mount = environment.paths.remoteMount(target.name)
        return try? await withAbandonableDeadline(Self.answerDeadline, operation: "measure the remote's free space") {
            SSHFSLayer.remoteCapacity(mountPoint: mount)?.available
        } ?? nil
    }

    /// A failed write-out, explained when the remote is out of space.
    func explain(_ failure: ImgBackupError) async -> ImgBackupError {
        guard let free = await available(), free < Self.nearlyFull else { return failure }
        let growth = target.size.map { "; the image may grow to \($0)" } ?? ""
        return ImgBackupError(
            failure.code,
            "the remote filesystem is full: writing the backup out to \(target.image) failed with \(ByteSize.format(free)) free in \(target.remote)",
            hint:
                "free space there, then run again\(growth); earlier backups are kept, and the next open checks the filesystem",
            cause: failure)
    }
}
