/// Every path imgbackup keeps state at on the client, listed in one place.
///
/// - runtime (`/run/imgbackup`, gone at reboot like the mounts it describes):
///   state records, lock files, the mounts of the remote directory, the NBD
///   bridge and source hosts;
/// - state (`/var/lib/imgbackup`, kept): per target, what its image must be,
///   its run history and measurements, markers the next command acts on.
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
            runtimeDirectory: environment["IMGBACKUP_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 }
                ?? "/run/imgbackup",
            stateDirectory: environment["IMGBACKUP_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/lib/imgbackup"
        )
    }

    // MARK: - runtime: gone at reboot

    /// Which layers of the target are (or may be) up (StateStore).
    public func stateRecord(_ target: String) -> String { "\(runtimeDirectory)/\(target).state.json" }
    /// The flock one imgbackup command holds on the target (TargetLock).
    public func lockFile(_ target: String) -> String { "\(runtimeDirectory)/\(target).lock" }
    public func targetRuntimeDirectory(_ target: String) -> String { "\(runtimeDirectory)/\(target)" }
    /// Where the remote directory is mounted over sshfs.
    public func remoteMount(_ target: String) -> String { "\(targetRuntimeDirectory(target))/remote" }
    /// Where the NBD bridge mounts its one-file filesystem, and its log.
    public func nbdMount(_ target: String) -> String { "\(targetRuntimeDirectory(target))/nbd" }
    public func nbdLog(_ target: String) -> String { "\(targetRuntimeDirectory(target))/nbd-bridge.log" }
    /// What nbdkit's S3 plugin reads while an s3 target is open (NBDKitS3.Files).
    public func s3Directory(_ target: String) -> String { "\(targetRuntimeDirectory(target))/s3" }
    /// Where the hosts of ssh:// sources are mounted, read-only, one
    /// directory per host: the copy step's view of them.
    public func sourcesDirectory(_ target: String) -> String { "\(targetRuntimeDirectory(target))/sources" }
    public func sourceMount(_ target: String, _ host: SourceHost) -> String {
        "\(sourcesDirectory(target))/\(host.directoryName)"
    }
    /// The checked copy of the header libcryptsetup unlocks from, only while unlocking.
    public func detachedHeader(_ target: String) -> String { "\(targetRuntimeDirectory(target))/luks-header" }

    // MARK: - state: kept

    public func targetStateDirectory(_ target: String) -> String { "\(stateDirectory)/\(target)" }
    /// The image's LUKS UUID, since the first version (LUKSIdentity).
    public func luksUUIDFile(_ target: String) -> String { "\(targetStateDirectory(target))/luks-uuid" }
    /// What the image's LUKS2 header must match (LUKSIdentity, HeaderPin).
    public func headerPinFile(_ target: String) -> String { "\(targetStateDirectory(target))/luks-header.json" }
    /// The last generation this machine wrote into the image (ImageGeneration).
    public func generationFile(_ target: String) -> String { "\(targetStateDirectory(target))/generation" }
    /// The token of the remote lock this machine took last (RemoteLockToken).
    public func remoteLockTokenFile(_ target: String) -> String { "\(targetStateDirectory(target))/remote-lock-token" }
    /// Set while the image is open; the next open checks a filesystem whose
    /// last session did not end cleanly (DirtyMarker).
    public func dirtyMarker(_ target: String) -> String { "\(targetStateDirectory(target))/dirty" }
    /// One JSON line per run, newest last (RunHistory).
    public func runHistory(_ target: String) -> String { "\(targetStateDirectory(target))/runs.jsonl" }
    /// The image's sizes as the last trim or run measured them (ImageMeasurement).
    public func imageMeasurement(_ target: String) -> String { "\(targetStateDirectory(target))/image.json" }
    /// The snapshot the next btrfs send is incremental against (BtrfsSendCopy).
    public func btrfsParent(_ target: String) -> String { "\(targetStateDirectory(target))/btrfs-parent" }
    /// BORG_BASE_DIR of the target's borg runs: its cache, keys and security
    /// records (BorgCopy).
    public func borgBaseDirectory(_ target: String) -> String { "\(targetStateDirectory(target))/borg" }
    /// Where the Prometheus textfile metrics go unless [metrics] says otherwise.
    public var metricsDirectory: String { "\(stateDirectory)/metrics" }
}
