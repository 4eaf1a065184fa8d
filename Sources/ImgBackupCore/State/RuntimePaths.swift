/// Where imgbackup keeps things on the client.
///
/// - runtime (`/run/imgbackup`, gone at reboot like the mounts it describes):
///   state records, lock files, the sshfs mount of the remote directory;
/// - state (`/var/lib/imgbackup`, kept): the LUKS UUID and header pin of each target's image.
///
/// `IMGBACKUP_RUNTIME_DIR` and `IMGBACKUP_STATE_DIR` move them (tests, and
/// machines where /var/lib is read-only).
public struct RuntimePaths: Sendable {
    public let runtimeDirectory: String
    public let stateDirectory: String

    public init(runtimeDirectory: String = "/run/imgbackup", stateDirectory: String = "/var/lib/imgbackup") {
        self.runtimeDirectory = runtimeDirectory
        self.stateDirectory = stateDirectory
    }

    public static func fromEnvironment(_ environment: [String: String]) -> RuntimePaths {
        RuntimePaths(
            runtimeDirectory: environment["IMGBACKUP_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/run/imgbackup",
            stateDirectory: environment["IMGBACKUP_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/lib/imgbackup")
    }

    public func stateRecord(_ target: String) -> String { "\(runtimeDirectory)/\(target).state.json" }
    public func lockFile(_ target: String) -> String { "\(runtimeDirectory)/\(target).lock" }
    public func targetRuntimeDirectory(_ target: String) -> String { "\(runtimeDirectory)/\(target)" }
    /// Where the remote directory is mounted over sshfs.
    public func remoteMount(_ target: String) -> String { "\(targetRuntimeDirectory(target))/remote" }
    /// Where the NBD bridge mounts its one-file filesystem, and its log.
    public func nbdMount(_ target: String) -> String { "\(targetRuntimeDirectory(target))/nbd" }
    public func nbdLog(_ target: String) -> String { "\(targetRuntimeDirectory(target))/nbd-bridge.log" }
    /// Where the hosts of ssh:// sources are mounted, read-only, one
    /// directory per host: the copy step's view of them.
    public func sourcesDirectory(_ target: String) -> String { "\(targetRuntimeDirectory(target))/sources" }
    public func sourceMount(_ target: String, _ host: SourceHost) -> String { "\(sourcesDirectory(target))/\(host.directoryName)" }
    public func targetStateDirectory(_ target: String) -> String { "\(stateDirectory)/\(target)" }
    public func luksUUIDFile(_ target: String) -> String { "\(targetStateDirectory(target))/luks-uuid" }
    /// What the image's LUKS2 header must match (HeaderPin).
    public func headerPinFile(_ target: String) -> String { "\(targetStateDirectory(target))/luks-header.json" }
    /// The last generation this machine wrote into the image (ImageGeneration).
    public func generationFile(_ target: String) -> String { "\(targetStateDirectory(target))/generation" }
    /// The checked copy of the header libcryptsetup unlocks from, only while unlocking.
    public func detachedHeader(_ target: String) -> String { "\(targetRuntimeDirectory(target))/luks-header" }
}
