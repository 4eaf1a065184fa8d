import ImgBackupOS

/// `imgbackup list`: the backup points in a target's image, whatever the
/// copy method made, oldest first. Reads only: a closed target is opened
/// read-only for it and closed again.
public struct ListOperation {
    public let target: Target
    public let environment: OperationEnvironment

    public init(target: Target, environment: OperationEnvironment) {
        self.target = target
        self.environment = environment
    }

    public func run() async throws(ImgBackupError) -> [BackupPoint] {
        try await ReadOnlySession(target: target, environment: environment, step: "the listing").run {
            (context: CopyContext) async throws(ImgBackupError) -> [BackupPoint] in
            try await CopyMethods.make(context.copy.method).points(context)
        }
    }
}
